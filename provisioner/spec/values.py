"""Values from the user, shown and parsed safely: how a message quotes a value (show,
key_text), the one parser of whole numbers, addresses and thumbprints, and the characters no
setting may hold. Everything else in the package reads and reports values through these."""

from __future__ import annotations

import ipaddress
import re
import reprlib

from provisioner.spec.schema import IPAddress
from provisioner.vsphere import endpoint

SHOW_MAX = 80
# Bounded at every level, so showing a value costs little however large or deep it is.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = SHOW_MAX


def show(value: object) -> str:
    """A value from the user as a message quotes it: its repr, cut to SHOW_MAX characters.

    Every message that quotes user input goes through this: a value may be a megabyte string,
    a list behind YAML aliases or a number too long to print (str() refuses past 4300 digits).
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    text = _REPR.repr(value)
    return text if len(text) <= SHOW_MAX else text[: SHOW_MAX - 3] + "..."


def key_text(key: object) -> str:
    """A mapping key as a field path names it: itself when it is short plain text, else shown."""
    if isinstance(key, str) and len(key) <= SHOW_MAX and _BAD_CHARACTER.search(key) is None:
        return key
    if isinstance(key, int) and not isinstance(key, bool) and key.bit_length() < 64:
        return str(key)
    return show(key)


# ASCII digits only: str.isdigit() is also true of '²', which int() refuses, and int() takes
# other scripts' digits, which a spec must not. As many digits as a YAML int may have.
_DIGITS = re.compile(r"[0-9]{1,100}")


def parse_int(value: object) -> int | None:
    """The one parser of whole numbers in a spec (YAML ints, or digits in a string as the
    environment gives them); None for anything else, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value.strip())
    return None


# Characters no setting may hold: control characters (Unicode's Cc), line and paragraph
# separators, lone surrogates. They break output, logs and vCenter's names, and a lone
# surrogate cannot even be written to a UTF-8 terminal.
_BAD_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _bad_character(text: str) -> str | None:
    """What is wrong with the first character no setting may hold, or None."""
    m = _BAD_CHARACTER.search(text)
    return f"holds the control character U+{ord(m.group()):04X} at position {m.start() + 1}" if m else None


def text_problem(text: str) -> str | None:
    """Why a string cannot be a setting's value (with what to do), or None."""
    bad = _bad_character(text)
    return f"{bad}; remove it (a setting is one line of text)" if bad else None


def _ip(s: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def normalize_thumbprint(s: str) -> str | None:
    """'ab:cd..' / 'ABCD..' / 'ab cd ..' -> 'AB:CD:..' for a SHA-256 thumbprint, else None."""
    digits = endpoint.thumbprint_hex(s)
    return endpoint.format_thumbprint(digits) if digits else None

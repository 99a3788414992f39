"""The lab's vCenter simulator: build it from govmomi's source, give it a certificate, run it.

The Go main (vcsim/main.go) wraps govmomi 0.24.2's simulator with the lab's inventory and
the fixes that make it answer like vCenter; this module only builds, starts and stops it.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from provisioner.errors import LabError

SOURCE = Path(__file__).with_name("vcsim") / "main.go"
GOPATH = "/usr/share/gocode"
GOVMOMI = Path(GOPATH) / "src/github.com/vmware/govmomi/simulator"
INSTALL_HINT = (
    "install the Go toolchain and govmomi's source: "
    "apt-get install golang-go golang-github-vmware-govmomi-dev"
)
START_TIMEOUT = 30.0
# Under the run directory: where faults armed at run time are handed to the simulator
# (provisioner/lab/faults.py writes them, vcsim/main.go's injector takes them).
FAULTS_DIR = "faults"

Log = Callable[[str], None]

_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Debian ships govmomi as GOPATH source, not as a module.
    env.update(GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(Path(tempfile.gettempdir()) / "vkp-go-build-cache"))
    return env


def _go() -> str:
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if Path("/usr/lib/go/bin/go").exists() else None)
    if go is None:
        raise LabError(
            "the Go toolchain (`go`) is not installed, so the simulator cannot be built",
            hint=INSTALL_HINT,
        )
    return go


def source_hash() -> str:
    """sha256 over the Go main and the toolchain version: either changing means a rebuild."""
    h = hashlib.sha256(SOURCE.read_bytes())
    try:
        version = subprocess.run(
            [_go(), "version"], capture_output=True, text=True, check=True, env=_go_env(), timeout=60
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise LabError(f"`go version` failed: {exc}", hint=INSTALL_HINT) from exc
    h.update(version.encode())
    return h.hexdigest()


def build(cache_dir: Path, log: Log) -> Path:
    """Return the simulator binary, building it into cache_dir/vcsim-<hash>/ if not cached."""
    if not GOVMOMI.is_dir():
        raise LabError(f"govmomi's simulator source is missing ({GOVMOMI})", hint=INSTALL_HINT)
    digest = source_hash()
    out_dir = Path(cache_dir) / f"vcsim-{digest[:16]}"
    binary = out_dir / "vcsim"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    log("building the vCenter simulator from govmomi's source (about 30 s, once)")
    # A temp name in the same directory, renamed into place: concurrent or interrupted builds
    # never leave a half-written binary where a later run would trust it.
    fd, tmp_name = tempfile.mkstemp(prefix=".vcsim-", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        proc = subprocess.run(
            [_go(), "build", "-o", str(tmp), SOURCE.name],
            cwd=SOURCE.parent,
            env=_go_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
            raise LabError(
                f"building the simulator failed (go build exited {proc.returncode}):\n{tail}",
                hint=INSTALL_HINT + "; the source is " + str(SOURCE),
            )
        tmp.chmod(0o755)
        os.replace(tmp, binary)
    except subprocess.TimeoutExpired as exc:
        raise LabError("building the simulator took more than 15 minutes", hint=INSTALL_HINT) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return binary


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1/localhost; the key is 0600."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vkp lab vCenter simulator")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "vcsim.crt", directory / "vcsim.key"
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(key_path, key_pem)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def thumbprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER certificate as vCenter shows it: AB:CD:..., uppercase."""
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def parse_delay(text: str) -> tuple[str, int]:
    """'CloneVM_Task=2000' -> ('CloneVM_Task', 2000)."""
    method, sep, ms = text.partition("=")
    method, ms = method.strip(), ms.strip()
    if not sep or not _METHOD.match(method) or not ms.isdigit():
        raise ValueError(f"invalid delay {text!r}: expected METHOD=MILLISECONDS, e.g. CloneVM_Task=2000")
    return method, int(ms)


def parse_fail(text: str) -> tuple[str, int]:
    """'CloneVM_Task:2' -> ('CloneVM_Task', 2): the second call of CloneVM_Task fails."""
    method, sep, k = text.rpartition(":")
    method, k = method.strip(), k.strip()
    if not sep or not _METHOD.match(method) or not k.isdigit() or int(k) < 1:
        raise ValueError(
            f"invalid fault {text!r}: expected METHOD:K with K >= 1 (the K-th call fails), "
            "e.g. CloneVM_Task:2"
        )
    return method, int(k)


def _write_private(path: Path, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, raw)
    finally:
        os.close(fd)


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _tls_answers(port: int) -> bool:
    ctx = ssl.create_default_context()
    # Only asks "is it serving TLS yet"; the session module verifies the certificate.
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, ctx.wrap_socket(raw):
            return True
    except (OSError, ssl.SSLError):
        return False


def _log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def start(
    binary: Path,
    run_dir: Path,
    *,
    port: int,
    hosts: int,
    username: str,
    password: str,
    delays: dict[str, int],
    fails: list[tuple[str, int]],
) -> int:
    """Start the simulator detached on 127.0.0.1:port and return its pid once it serves TLS.

    The certificate is run_dir/vcsim.crt (made by make_certificate if absent). On failure
    nothing is left running and LabError says why, with the simulator's log tail.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if port_in_use(port):
        raise LabError(
            f"port {port} on 127.0.0.1 is in use by another process; pass --port",
            hint=f"pick a free port, or stop whatever listens there (`ss -ltnp 'sport = :{port}'`)",
        )
    cert, key = run_dir / "vcsim.crt", run_dir / "vcsim.key"
    if not (cert.is_file() and key.is_file()):
        cert, key = make_certificate(run_dir)
    password_file = run_dir / "vcsim.password"
    _write_private(password_file, password + "\n")
    ready = run_dir / "vcsim.ready"
    ready.unlink(missing_ok=True)
    faults_dir = run_dir / FAULTS_DIR
    faults_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(faults_dir, 0o700)
    log_path = run_dir / "vcsim.log"

    argv = [
        str(binary),
        "-listen", f"127.0.0.1:{port}",
        "-hosts", str(hosts),
        "-tls-cert", str(cert),
        "-tls-key", str(key),
        "-username", username,
        "-password-file", str(password_file),
        "-ready-file", str(ready),
        "-faults-dir", str(faults_dir),
    ]  # fmt: skip
    for method, ms in sorted(delays.items()):
        argv += ["-delay", f"{method}={ms}"]
    for method, k in fails:
        argv += ["-fail", f"{method}:{k}"]

    with open(log_path, "ab") as logf, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            argv,
            stdin=devnull,
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=run_dir,
        )

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code = proc.poll()
        if code is not None:
            tail = _log_tail(log_path)
            if "address already in use" in tail:
                cause = f"port {port} on 127.0.0.1 is in use by another process; pass --port"
            else:
                cause = f"the simulator exited with status {code} before serving"
            raise LabError(f"{cause}\n--- {log_path} (tail) ---\n{tail}", hint="see the log above")
        if ready.exists() and _tls_answers(port):
            return proc.pid
        if time.monotonic() > deadline:
            stop(proc.pid)
            raise LabError(
                f"the simulator did not serve on 127.0.0.1:{port} within {START_TIMEOUT:.0f}s\n"
                f"--- {log_path} (tail) ---\n{_log_tail(log_path)}",
                hint="see the log above",
            )
        time.sleep(0.05)


def stop(pid: int, timeout: float = 10.0) -> None:
    """Stop the simulator started by start(); a pid that is already gone is fine."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    except PermissionError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Reap it if it is our child, so it does not linger as a zombie.
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)

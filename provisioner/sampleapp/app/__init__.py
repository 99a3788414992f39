"""The sample app's own source: the files its image runs (api.py, ui.py).

Each file stands alone on Python's standard library, because the image holds Debian's
interpreter and standard library and nothing else. vkp imports them only in its tests.
"""

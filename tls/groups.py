"""Restricting a context's key-exchange groups, which Python 3.11's ``ssl`` has no call for.

Mozilla's "intermediate" profile offers X25519, P-256 and P-384 only; OpenSSL's defaults add
X448, P-521 and the FFDHE groups, which scanners such as sslyze report as a deviation. Python
3.11's ``SSLContext`` has no ``set_groups``, so this calls OpenSSL's ``SSL_CTX_ctrl`` (what the
``SSL_CTX_set1_groups_list`` macro expands to) through ctypes, on the very library ``_ssl`` is
linked with, with the context's ``SSL_CTX`` pointer read from the object.

That pointer is the first field after the object header in CPython's ``PySSLContext``. Before
anything is written through it, it is checked: OpenSSL's view of the context's options must
equal Python's. If the layout ever differed, or a symbol were missing, the groups stay
OpenSSL's defaults and the caller is told, rather than anything being guessed.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import ssl

# Mozilla intermediate, version 5.7, in its order of preference.
INTERMEDIATE_GROUPS = "X25519:prime256v1:secp384r1"
_SSL_CTRL_SET_GROUPS_LIST = 92  # from OpenSSL's ssl.h, the same in 1.1.1 and 3.x


@functools.cache
def _libssl() -> ctypes.CDLL | None:
    # dlsym through the handle of _ssl searches the libraries it was linked with, so this
    # finds the libssl Python uses even when another one is installed.
    try:
        library = ctypes.CDLL(getattr(_ssl, "__file__", None))
        get_options = library.SSL_CTX_get_options
        ctrl = library.SSL_CTX_ctrl
    except (OSError, AttributeError):
        return None
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    return library


def set_groups(context: ssl.SSLContext, groups: str = INTERMEDIATE_GROUPS) -> bool:
    """Limit ``context`` to ``groups`` (OpenSSL names, colon-separated); False if not done."""
    library = _libssl()
    if library is None:
        return False
    ctx_pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not ctx_pointer or library.SSL_CTX_get_options(ctx_pointer) != int(context.options):
        return False
    return bool(library.SSL_CTX_ctrl(ctx_pointer, _SSL_CTRL_SET_GROUPS_LIST, 0,
                                     groups.encode("ascii")) == 1)

"""Helpers the module runs in each worker's interpreter (not on the request path)."""

import ast
import hashlib
import importlib
import importlib.util
import io
import logging
import os
import sys


class RequestTimeout(Exception):
    """Raised inside an application that ran past wsgi_timeout (the client got a 504)."""


def _resolve(module, callable_name, where):
    obj = module
    for part in callable_name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(
                f"{where} has no attribute {callable_name!r}"
            ) from None
    if not callable(obj):
        raise TypeError(f"{where}:{callable_name} is not callable")
    return obj


def _call_factory(factory, call_text, where):
    """Calls an application factory with the literal arguments of `name(...)`."""
    call = ast.parse("f" + call_text, mode="eval").body
    args = [ast.literal_eval(a) for a in call.args]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    app = factory(*args, **kwargs)
    if not callable(app):
        raise TypeError(f"{where}{call_text} returned {type(app).__name__!s}, not a WSGI callable")
    return app


def load_script(path, callable_name, factory_args=None):
    """Imports a script file under a name unique to its path.

    Two scripts both called wsgi.py in different directories get two module names, so
    they never replace each other in sys.modules. The script's directory is appended to
    sys.path (as mod_wsgi-express does), so modules beside it import.
    """
    path = os.path.abspath(path)
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    stem = "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
    name = f"_ngx_wsgi_{stem}_{digest}"
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.append(directory)
    if name in sys.modules:
        # Another wsgi_app names another callable of the same script: one module.
        obj = _resolve(sys.modules[name], callable_name, path)
        return _call_factory(obj, factory_args, f"{path}:{callable_name}") if factory_args else obj
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path!r} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    obj = _resolve(module, callable_name, path)
    return _call_factory(obj, factory_args, f"{path}:{callable_name}") if factory_args else obj


def load_module(module_name, callable_name, factory_args=None):
    """Imports a dotted module from sys.path (and calls the factory, if one is named)."""
    module = importlib.import_module(module_name)
    obj = _resolve(module, callable_name, module_name)
    return _call_factory(obj, factory_args, f"{module_name}:{callable_name}") if factory_args else obj


class _LogRaw(io.RawIOBase):
    """The bytes end of sys.stdout / sys.stderr: every write goes to nginx's error log
    (through the module's log stream, which keeps partial lines until their newline).
    fileno() is 2, which nginx points at the error log in its workers, so that code writing
    to the descriptor (faulthandler, subprocesses) lands there too."""

    def __init__(self, sink):
        super().__init__()
        self._sink = sink

    def writable(self):
        return True

    def write(self, data):
        return self._sink.write_bytes(bytes(data))

    def flush(self):
        if not self.closed:
            self._sink.flush()

    def fileno(self):
        return 2

    def isatty(self):
        return False


def log_stream(sink):
    """A text stream like the interpreter's own sys.stderr (buffer, encoding, errors,
    fileno, line buffering) whose output goes to nginx's error log."""
    raw = _LogRaw(sink)
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", errors="backslashreplace",
                            line_buffering=True, write_through=True)


# Python logging levels to nginx's (NGX_LOG_CRIT 3, ERR 4, WARN 5, INFO 7, DEBUG 8).
def _nginx_level(levelno):
    if levelno >= logging.CRITICAL:
        return 3
    if levelno >= logging.ERROR:
        return 4
    if levelno >= logging.WARNING:
        return 5
    if levelno >= logging.INFO:
        return 7
    return 8


class NginxHandler(logging.Handler):
    """Records into nginx's error log at their level; during a request, with its context
    (client, server, request). Installed as `logging.lastResort`: it takes records that no
    handler of the application's takes, so an application that configures logging keeps its
    own handlers."""

    def __init__(self, emit):
        super().__init__()
        self._emit = emit
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record):
        try:
            self._emit(_nginx_level(record.levelno), self.format(record))
        except Exception:
            self.handleError(record)


def install_logging(emit, error_log_level):
    """Root logger records go to nginx's error log, filtered by its level (the root logger's
    level follows `error_log`)."""
    logging.lastResort = NginxHandler(emit)
    levels = {3: logging.CRITICAL, 4: logging.ERROR, 5: logging.WARNING, 6: logging.WARNING,
              7: logging.INFO}
    if error_log_level >= 8:
        level = logging.DEBUG
    else:
        level = levels.get(error_log_level, logging.CRITICAL + 1)
    logging.getLogger().setLevel(level)

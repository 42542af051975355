//! Logging into nginx's error log: messages of the module, Python tracebacks, `wsgi.errors`,
//! and the interpreter's own `sys.stderr` / `sys.stdout`.
//!
//! A `Log` is a pointer to an `ngx_log_t`: the worker's cycle log, or a request's connection
//! log (which adds nginx's "client: ..., server: ..., request: ..." context). A request log is
//! only valid while its request lives; `LogStream::detach` moves a stream that may outlive
//! the request (an application can keep `wsgi.errors`) back to the cycle log.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use ngx::ffi::{ngx_cycle, ngx_log_t, ngx_uint_t};
use ngx::ngx_log_error;
use pyo3::prelude::*;
use pyo3::types::PyString;

pub use ngx::ffi::{NGX_LOG_ALERT, NGX_LOG_DEBUG, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_LOG_WARN};

/// nginx cuts a log entry at about 2 KB; longer messages are split into several entries.
const MAX_ENTRY: usize = 1800;

#[derive(Clone, Copy, Debug)]
pub struct Log(*mut ngx_log_t);

impl Log {
    /// The current cycle's log.
    pub fn cycle() -> Log {
        // SAFETY: `ngx_cycle` is set before any module code runs and is only replaced by the
        // master while no worker code runs; we read it on the worker's own thread.
        Log(unsafe { (*ngx_cycle).log })
    }

    /// # Safety
    /// `log` must stay valid for as long as this `Log` (and its copies) are used.
    pub unsafe fn from_ptr(log: *mut ngx_log_t) -> Log {
        Log(log)
    }

    pub fn as_ptr(&self) -> *mut ngx_log_t {
        self.0
    }

    /// Logs `msg` at `level`, one entry per line (long lines split).
    pub fn write(&self, level: u32, msg: &str) {
        let log = self.0;
        if log.is_null() {
            return;
        }
        for line in msg.lines() {
            let mut rest = line.trim_end_matches('\r');
            loop {
                let mut cut = rest.len().min(MAX_ENTRY);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                let (piece, tail) = rest.split_at(cut);
                ngx_log_error!(level as ngx_uint_t, log, "{}", piece);
                if tail.is_empty() {
                    break;
                }
                rest = tail;
            }
        }
    }

    pub fn error(&self, msg: &str) {
        self.write(NGX_LOG_ERR, msg);
    }

    /// Logs a Python exception with its traceback: first `what`, then the traceback lines.
    pub fn exception(&self, py: Python<'_>, what: &str, err: &PyErr) {
        self.error(&format!("{what}: {}", format_exception(py, err)));
    }
}

/// `traceback.format_exception(err)` joined, without the trailing newline; falls back to
/// the exception's `str()` when formatting itself fails.
pub fn format_exception(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let tb = py.import("traceback")?;
        let lines = tb.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let joined = PyString::new(py, "").call_method1("join", (lines,))?;
        Ok(joined.extract::<String>()?)
    })();
    match formatted {
        Ok(s) => s.trim_end().to_string(),
        Err(_) => err.to_string(),
    }
}

/// A text stream whose lines go to nginx's error log: `wsgi.errors`, `sys.stderr`,
/// `sys.stdout`. Lines are buffered until their newline (or `flush()`).
///
/// Application threads may write to it too (it is `sys.stderr`), so its state is behind a
/// lock; writing an entry is one `write(2)` to the log file, as nginx's own threads do.
#[pyclass(module = "ngx_wsgi", name = "ErrorLog")]
pub struct LogStream {
    log: AtomicPtr<ngx_log_t>,
    level: u32,
    pending: Mutex<String>,
}

impl LogStream {
    pub fn new(log: Log, level: u32) -> LogStream {
        LogStream { log: AtomicPtr::new(log.0), level, pending: Mutex::new(String::new()) }
    }

    /// Flushes what is pending and points the stream at the cycle log: called when the
    /// request whose log it used ends.
    pub fn detach(&self) {
        self.flush();
        self.log.store(Log::cycle().0, Ordering::Release);
    }

    fn emit(&self, text: &str) {
        Log(self.log.load(Ordering::Acquire)).write(self.level, text);
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, String> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl LogStream {
    fn write(&self, s: &Bound<'_, PyAny>) -> PyResult<usize> {
        let s = s.cast::<PyString>().map_err(|_| {
            pyo3::exceptions::PyTypeError::new_err(format!(
                "write() argument must be str, not {}",
                s.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        let text = s.to_cow()?;
        let n = text.chars().count();
        let mut pending = self.pending();
        pending.push_str(&text);
        if let Some(i) = pending.rfind('\n') {
            let complete: String = pending.drain(..=i).collect();
            drop(pending);
            self.emit(&complete);
        }
        Ok(n)
    }

    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for line in lines.try_iter()? {
            self.write(&line?)?;
        }
        Ok(())
    }

    fn flush(&self) {
        let rest: String = self.pending().drain(..).collect();
        if !rest.is_empty() {
            self.emit(&rest);
        }
    }

    fn isatty(&self) -> bool {
        false
    }

    fn writable(&self) -> bool {
        true
    }

    #[getter]
    fn encoding(&self) -> &'static str {
        "utf-8"
    }

    #[getter]
    fn errors(&self) -> &'static str {
        "backslashreplace"
    }

    #[getter]
    fn closed(&self) -> bool {
        false
    }
}

//! Logging into nginx's error log: messages of the module, Python tracebacks, `wsgi.errors`,
//! and the interpreter's own `sys.stderr` / `sys.stdout`.
//!
//! A `Log` is a pointer to an `ngx_log_t`: the worker's cycle log, or a request's connection
//! log (which adds nginx's "client: ..., server: ..., request: ..." context). A request log is
//! only valid while its request lives; `LogStream::detach` moves a stream that may outlive
//! the request (an application can keep `wsgi.errors`) back to the cycle log.

use std::sync::{Arc, Mutex};

use ngx::ffi::{ngx_cycle, ngx_log_t, ngx_uint_t};
use ngx::ngx_log_error;
use pyo3::prelude::*;
use pyo3::types::PyString;

pub use ngx::ffi::{
    NGX_LOG_ALERT, NGX_LOG_DEBUG, NGX_LOG_ERR, NGX_LOG_INFO, NGX_LOG_NOTICE, NGX_LOG_WARN,
};

/// `debug!(log_ptr, "...", args)`: nginx's debug log (`error_log ... debug` in a
/// `--with-debug` build; nothing is formatted otherwise), for tracing a request's path.
#[macro_export]
macro_rules! debug {
    ($log:expr, $($arg:tt)+) => {
        ::ngx::ngx_log_debug!(mask: ::ngx::log::DebugMask::Http, $log, $($arg)+)
    };
}

/// `error!(log, "...", args)`: an `[error]` entry through a `LogWrite` (a request's log, the
/// cycle's, or a thread's exchange).
#[macro_export]
macro_rules! error {
    ($log:expr, $($arg:tt)+) => {
        $crate::log::LogWrite::write(&$log, $crate::log::NGX_LOG_ERR, &format!($($arg)+))
    };
}

/// `warn!(log, "...", args)`: a `[warn]` entry, as `error!`.
#[macro_export]
macro_rules! warn {
    ($log:expr, $($arg:tt)+) => {
        $crate::log::LogWrite::write(&$log, $crate::log::NGX_LOG_WARN, &format!($($arg)+))
    };
}

/// nginx cuts a log entry at about 2 KB; longer messages are split into several entries.
const MAX_ENTRY: usize = 1800;

#[derive(Clone, Copy, Debug)]
pub struct Log(*mut ngx_log_t);

// SAFETY: a `Log` is only dereferenced on the event loop thread: `LogWrite::write` hands
// messages from other threads to the bridge, which writes them on the loop (without a
// bridge, they go to fd 2 as plain lines, never through nginx's log from another thread).
unsafe impl Send for Log {}
// SAFETY: as for `Send`: shared `Log`s are only dereferenced on the event loop thread.
unsafe impl Sync for Log {}

static LOOP_THREAD: std::sync::OnceLock<std::thread::ThreadId> = std::sync::OnceLock::new();

/// Hands a message from another thread to the event loop; false when it could not.
type Forward = fn(u32, &str) -> bool;
static FORWARD: std::sync::OnceLock<Forward> = std::sync::OnceLock::new();

/// Registers how other threads' messages reach the loop (the bridge does, at worker start).
pub fn set_forwarder(forward: Forward) {
    let _ = FORWARD.set(forward);
}

/// The worker's cycle log, cached so that other threads never read `ngx_cycle`.
static CYCLE_LOG: std::sync::atomic::AtomicPtr<ngx_log_t> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

/// Records the calling thread as the worker's event loop thread, and its cycle log.
pub fn set_loop_thread() {
    let _ = LOOP_THREAD.set(std::thread::current().id());
    // SAFETY: called from init_process, on the worker's thread, with `ngx_cycle` set.
    CYCLE_LOG.store(
        unsafe { (*ngx_cycle).log },
        std::sync::atomic::Ordering::Release,
    );
}

pub fn on_loop_thread() -> bool {
    LOOP_THREAD
        .get()
        .is_none_or(|t| *t == std::thread::current().id())
}

/// Something that takes log messages: nginx's log directly (on the loop), or a request's
/// exchange (from a Python thread, delivered on the loop with the request's context).
pub trait LogWrite: Send + Sync {
    fn write(&self, level: u32, msg: &str);

    fn error(&self, msg: &str) {
        self.write(NGX_LOG_ERR, msg);
    }

    /// Logs a Python exception with its traceback: first `what`, then the traceback lines.
    fn exception(&self, py: Python<'_>, what: &str, err: &PyErr) {
        self.error(&format!("{what}: {}", format_exception(py, err)));
    }
}

impl LogWrite for Log {
    fn write(&self, level: u32, msg: &str) {
        if on_loop_thread() {
            self.write_direct(level, msg);
        } else if !FORWARD.get().is_some_and(|forward| forward(level, msg)) {
            write_stderr(msg);
        }
    }
}

/// Last resort off the loop thread: the text as lines on fd 2 (nginx's error log in a
/// worker), without nginx's prefix.
fn write_stderr(msg: &str) {
    use std::io::Write;
    let mut text = msg.trim_end_matches(['\r', '\n']).to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

impl Log {
    /// The current cycle's log.
    pub fn cycle() -> Log {
        let cached = CYCLE_LOG.load(std::sync::atomic::Ordering::Acquire);
        if !cached.is_null() {
            return Log(cached);
        }
        // SAFETY: `ngx_cycle` is set before any module code runs; without a cached log we
        // are on the thread that runs nginx (configuration or worker start).
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

    /// The level this log writes down to (`error_log ... LEVEL`; debug is 8).
    pub fn level(&self) -> u32 {
        if self.0.is_null() {
            return NGX_LOG_ERR;
        }
        // SAFETY: a non-null `Log` points at a live `ngx_log_t` (see `from_ptr`), read on the
        // thread that starts Python.
        let level = unsafe { (*self.0).log_level };
        level.min(NGX_LOG_DEBUG as usize) as u32
    }

    /// Logs `msg` at `level`. A multi-line message (a traceback) stays one entry, with its
    /// lines, unless it is longer than an entry can hold: then it is split at line ends.
    pub fn write_direct(&self, level: u32, msg: &str) {
        let log = self.0;
        if log.is_null() {
            return;
        }
        let msg = msg.trim_end_matches(['\r', '\n']);
        let mut entry = String::new();
        for line in msg.split('\n') {
            let line = line.trim_end_matches('\r');
            if !entry.is_empty() && entry.len() + 1 + line.len() > MAX_ENTRY {
                ngx_log_error!(level as ngx_uint_t, log, "{}", entry);
                entry.clear();
            }
            let mut rest = line;
            while rest.len() > MAX_ENTRY {
                let mut cut = MAX_ENTRY;
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                ngx_log_error!(level as ngx_uint_t, log, "{}", &rest[..cut]);
                rest = &rest[cut..];
            }
            if !entry.is_empty() {
                entry.push('\n');
            }
            entry.push_str(rest);
        }
        if !entry.is_empty() || msg.is_empty() {
            ngx_log_error!(level as ngx_uint_t, log, "{}", entry);
        }
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
        joined.extract::<String>()
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
    target: Mutex<Arc<dyn LogWrite>>,
    level: u32,
    pending: Mutex<String>,
}

impl LogStream {
    pub fn new(target: Arc<dyn LogWrite>, level: u32) -> LogStream {
        LogStream {
            target: Mutex::new(target),
            level,
            pending: Mutex::new(String::new()),
        }
    }

    /// Flushes what is pending and points the stream at the cycle log: called when the
    /// request whose log it used ends.
    pub fn detach(&self) {
        self.flush();
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(Log::cycle());
    }

    fn emit(&self, text: &str) {
        let target = self
            .target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        target.write(self.level, text);
    }

    /// Adds text to the pending line; complete lines go to the log.
    fn push_text(&self, text: &str) {
        let mut pending = self.pending();
        pending.push_str(text);
        if let Some(i) = pending.rfind('\n') {
            let complete: String = pending.drain(..=i).collect();
            drop(pending);
            self.emit(&complete);
        }
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
                s.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        let text = s.to_cow()?;
        self.push_text(&text);
        Ok(text.chars().count())
    }

    /// The bytes side (`sys.stderr.buffer` ends here): decoded as UTF-8, kept until a newline.
    fn write_bytes(&self, data: &[u8]) -> usize {
        self.push_text(&String::from_utf8_lossy(data));
        data.len()
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

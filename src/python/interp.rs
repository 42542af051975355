//! The interpreter of one worker process: start, application import, stop.
//!
//! Lifetime: Python starts in `init_process` (after the fork, never in the master) and stops
//! in `exit_process`. Between the two, `WORKER` holds the imported applications and the
//! per-worker constant environ. A reload starts new workers, hence new interpreters that
//! import the current code.
//!
//! Applications are imported when the worker starts, so the first request does not pay for
//! the import and a broken application shows its traceback in the log at once. An import
//! that fails is retried at the application's next request (answering 500 while it fails).

use std::ffi::CString;
use std::path::Path;
use std::sync::{Condvar, Mutex, OnceLock};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use crate::conf::{AppSource, AppSpec, MainConf};
use crate::log::{Log, LogStream, LogWrite, NGX_LOG_ALERT, NGX_LOG_ERR};

/// Helpers written in Python: importing scripts under unique names, and the like.
const BOOTSTRAP: &str = include_str!("bootstrap.py");

pub struct App {
    pub spec: AppSpec,
    pub name: String,
    load: Mutex<Load>,
    loaded: Condvar,
}

/// Where an application's import stands.
#[derive(Default)]
struct Load {
    callable: Option<Py<PyAny>>,
    /// The thread importing it now: others wait for its result instead of importing again.
    importing: Option<std::thread::ThreadId>,
    /// Imports attempted so far (a waiter sees whether the one it waited for failed).
    attempts: u64,
}

impl App {
    fn new(spec: &AppSpec) -> App {
        App {
            spec: spec.clone(),
            name: spec.display(),
            load: Mutex::default(),
            loaded: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Load> {
        self.load.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Worker {
    pub apps: Vec<App>,
    pub base_environ: Py<PyDict>,
    bootstrap: Py<PyModule>,
}

static WORKER: OnceLock<Worker> = OnceLock::new();

/// The worker's interpreter state, if Python started.
pub fn worker() -> Option<&'static Worker> {
    WORKER.get()
}

fn status_failed(status: &ffi::PyStatus) -> bool {
    // SAFETY: `PyStatus_Exception` only reads the status value.
    unsafe { ffi::PyStatus_Exception(*status) != 0 }
}

fn status_message(status: &ffi::PyStatus) -> String {
    if status.err_msg.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a failed status carries a static C string.
    unsafe { std::ffi::CStr::from_ptr(status.err_msg) }
        .to_string_lossy()
        .into_owned()
}

/// `Py_InitializeFromConfig` with nginx's needs: no signal handlers (nginx owns signals), no
/// command line parsing, and a virtualenv given by `wsgi_python_home` found the way Python
/// itself finds one (its `pyvenv.cfg` beside the `bin/python` it names).
fn initialize(home: Option<&Path>) -> Result<(), String> {
    // SAFETY: called once per process, before any other Python call, on the thread that
    // will own the main thread state; `config` is initialised by `PyConfig_InitPythonConfig`
    // and cleared on every path.
    unsafe {
        if ffi::Py_IsInitialized() != 0 {
            return Ok(());
        }
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::zeroed();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let config = config.assume_init_mut();
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        config.use_environment = 1;
        config.user_site_directory = 0;

        let cfg: *mut ffi::PyConfig = config;
        let set = |field: *mut *mut libc::wchar_t, value: &str| -> Result<(), String> {
            let c = CString::new(value).map_err(|_| format!("invalid path \"{value}\""))?;
            let status = ffi::PyConfig_SetBytesString(cfg, field, c.as_ptr());
            if status_failed(&status) {
                return Err(status_message(&status));
            }
            Ok(())
        };
        let result = (|| {
            if let Some(home) = home {
                let home_s = home.to_string_lossy();
                if home.join("pyvenv.cfg").is_file() {
                    // A virtualenv: Python reads pyvenv.cfg next to the executable's dir.
                    set(&raw mut (*cfg).executable, &format!("{home_s}/bin/python3"))?;
                    set(
                        &raw mut (*cfg).program_name,
                        &format!("{home_s}/bin/python3"),
                    )?;
                } else {
                    // A Python installation prefix, as PYTHONHOME would name it.
                    set(&raw mut (*cfg).home, &home_s)?;
                }
            }
            let status = ffi::Py_InitializeFromConfig(cfg);
            if status_failed(&status) {
                return Err(status_message(&status));
            }
            Ok(())
        })();
        ffi::PyConfig_Clear(cfg);
        result?;
        // Initialisation leaves this thread holding the GIL: release it, so that
        // `Python::attach` works from here on, on this thread and others.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// Starts Python in this worker and imports every application. Failures are logged; the
/// worker keeps serving everything else.
pub fn start_worker(mcf: &MainConf, log: Log) {
    // Checked at configuration time too; the virtualenv may have been recreated since.
    if let Some(Err(e)) = mcf
        .python_home
        .as_deref()
        .map(|h| crate::conf::parse::check_venv_version(h, embedded_version()))
    {
        log.write(NGX_LOG_ALERT, &format!("wsgi: python not started: {e}"));
        return;
    }
    if let Err(e) = initialize(mcf.python_home.as_deref()) {
        log.write(
            NGX_LOG_ALERT,
            &format!("wsgi: python initialization failed: {e}"),
        );
        return;
    }
    let started = Python::attach(|py| -> PyResult<Worker> {
        let sys = py.import("sys")?;
        let code = CString::new(BOOTSTRAP).expect("bootstrap has no NUL");
        let bootstrap = PyModule::from_code(py, &code, c"ngx_wsgi_bootstrap.py", c"_ngx_wsgi")?;
        // sys.stderr / sys.stdout: text streams like the interpreter's own, writing into
        // nginx's error log with its prefix and level (print() at info).
        for (name, level) in [
            ("stderr", NGX_LOG_ERR),
            ("stdout", crate::log::NGX_LOG_INFO),
        ] {
            let sink = Bound::new(py, LogStream::new(std::sync::Arc::new(Log::cycle()), level))?;
            let stream = bootstrap.call_method1("log_stream", (sink,))?;
            sys.setattr(name, &stream)?;
            sys.setattr(format!("__{name}__").as_str(), &stream)?;
        }

        // `logging`: records no handler of the application's takes go to nginx's error log.
        let emit = pyo3::wrap_pyfunction!(crate::python::wsgi::log, &bootstrap)?;
        bootstrap.call_method1("install_logging", (emit, log.level()))?;

        let path = sys.getattr("path")?;
        for (i, dir) in mcf.python_path.iter().enumerate() {
            path.call_method1("insert", (i, dir.to_string_lossy().as_ref()))?;
        }

        let file_wrapper = py.get_type::<crate::python::file_wrapper::FileWrapper>();
        let base = crate::python::environ::base_environ(
            py,
            mcf.threads() > 0,
            true,
            file_wrapper.as_any(),
        )?;

        let apps = mcf.apps.iter().map(App::new).collect();
        Ok(Worker {
            apps,
            base_environ: base.unbind(),
            bootstrap: bootstrap.unbind(),
        })
    });
    let worker = match started {
        Ok(w) => w,
        Err(e) => {
            Python::attach(|py| log.exception(py, "wsgi: python setup failed", &e));
            return;
        }
    };
    let worker = WORKER.get_or_init(|| worker);
    Python::attach(|py| {
        for app in &worker.apps {
            let _ = worker.load(py, app, &log);
        }
        if let Some(hook) = &mcf.worker_start {
            worker.run_hook(py, "wsgi_worker_start", hook, &log);
        }
    });
}

/// Runs `wsgi_worker_stop` (before the interpreter is finalized).
pub fn run_stop_hook(mcf: &MainConf) {
    let (Some(worker), Some(hook)) = (worker(), mcf.worker_stop.as_ref()) else {
        return;
    };
    Python::attach(|py| worker.run_hook(py, "wsgi_worker_stop", hook, &Log::cycle()));
}

impl Worker {
    /// Imports and calls a worker hook; an exception is logged with its traceback and the
    /// worker goes on.
    fn run_hook(
        &self,
        py: Python<'_>,
        directive: &str,
        (module, callable): &(String, String),
        log: &dyn LogWrite,
    ) {
        let called = self
            .bootstrap
            .bind(py)
            .call_method1("load_module", (module.as_str(), callable.as_str()))
            .and_then(|f| f.call0());
        match called {
            Ok(_) => log.write(
                crate::log::NGX_LOG_INFO,
                &format!("{directive} {module}:{callable} done"),
            ),
            Err(e) => log.exception(py, &format!("{directive} {module}:{callable} failed"), &e),
        }
    }

    /// The application's callable, importing it if that has not succeeded yet. One thread
    /// imports at a time: the others wait (without the interpreter) for its result, and a
    /// failed import answers their requests too, so a script never runs twice at once.
    pub fn load<'py>(
        &self,
        py: Python<'py>,
        app: &App,
        log: &dyn LogWrite,
    ) -> Option<Bound<'py, PyAny>> {
        // The lock is never held while Python runs, nor waited for with the interpreter held.
        {
            let mut st = app.state();
            if let Some(c) = st.callable.as_ref() {
                return Some(c.bind(py).clone());
            }
            let me = std::thread::current().id();
            if st.importing == Some(me) {
                // The application's own import asked for itself.
                return None;
            }
            if st.importing.is_some() {
                let attempt = st.attempts;
                drop(st);
                py.detach(|| {
                    let mut st = app.state();
                    while st.importing.is_some() && st.attempts == attempt {
                        st = app.loaded.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                });
                return app.state().callable.as_ref().map(|c| c.bind(py).clone());
            }
            st.importing = Some(me);
        }
        let bootstrap = self.bootstrap.bind(py);
        let loaded = match &app.spec.source {
            AppSource::Script(path) => bootstrap.call_method1(
                "load_script",
                (
                    path.to_string_lossy().as_ref(),
                    app.spec.callable.as_str(),
                    app.spec.factory_args.as_deref(),
                ),
            ),
            AppSource::Module(module) => bootstrap.call_method1(
                "load_module",
                (
                    module.as_str(),
                    app.spec.callable.as_str(),
                    app.spec.factory_args.as_deref(),
                ),
            ),
        };
        let mut st = app.state();
        st.importing = None;
        st.attempts += 1;
        let result = match loaded {
            Ok(callable) => {
                st.callable = Some(callable.clone().unbind());
                drop(st);
                log.write(
                    crate::log::NGX_LOG_INFO,
                    &format!("wsgi app \"{}\" loaded", app.name),
                );
                Some(callable)
            }
            Err(e) => {
                drop(st);
                log.exception(
                    py,
                    &format!("wsgi app \"{}\" could not be loaded", app.name),
                    &e,
                );
                None
            }
        };
        app.loaded.notify_all();
        result
    }
}

/// The calling thread's kernel id (as in `/proc/self/task/`).
pub fn kernel_thread_id() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Takes ownership of a descriptor Python just duplicated for us (`os.dup`).
pub fn own_fd(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` is a fresh duplicate nothing else owns or closes (os.dup made it).
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// The `major.minor` of the Python this module embeds (readable before it starts).
pub fn embedded_version() -> (u32, u32) {
    // SAFETY: Py_GetVersion returns a static string and may be called before initialization.
    let v = unsafe { std::ffi::CStr::from_ptr(ffi::Py_GetVersion()) }.to_string_lossy();
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Stops the interpreter: `atexit` handlers run, buffered output is flushed.
pub fn stop_worker() {
    // SAFETY: exit_process runs on the worker's main thread, after the event loop stopped;
    // no other thread of ours runs Python any more.
    unsafe {
        if ffi::Py_IsInitialized() == 0 {
            return;
        }
        let _gil = ffi::PyGILState_Ensure();
        if ffi::Py_FinalizeEx() < 0 {
            Log::cycle().write(NGX_LOG_ALERT, "wsgi: python finalization failed");
        }
    }
}

/// Runs `f` with every signal blocked on this thread, so that threads it spawns inherit a
/// full mask: nginx's signals (QUIT, TERM, HUP, USR1...) must reach the event loop thread,
/// whose handlers and `epoll_wait` act on them, never a Python thread.
pub fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain sigset operations on local values; the old mask is restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        result
    }
}

/// Starts `threads` application threads and the watchdog.
/// Raises `RequestTimeout` (from the bootstrap module) in the thread `ident`, at its next
/// Python instruction. A thread blocked in one long C call sees it when that call returns.
pub fn raise_timeout(py: Python<'_>, ident: u64) {
    let Some(worker) = worker() else { return };
    let Ok(exc) = worker.bootstrap.bind(py).getattr("RequestTimeout") else {
        return;
    };
    // SAFETY: we hold the GIL (`py`); `exc` is a live exception class, borrowed for the call
    // (the interpreter takes its own reference).
    unsafe {
        ffi::PyThreadState_SetAsyncExc(ident as libc::c_ulong as _, exc.as_ptr());
    }
}

/// Clears an asynchronous exception still pending for the thread `ident`.
pub fn clear_async_exc(ident: u64) {
    Python::attach(|_py| {
        // SAFETY: we hold the GIL; a null exception clears a pending one.
        unsafe {
            ffi::PyThreadState_SetAsyncExc(ident as libc::c_ulong as _, std::ptr::null_mut());
        }
    });
}

//! Configuration: `MainConf` (http level: one interpreter per worker), `LocConf`, their
//! merge, and the directive table. The parsers are in `parse.rs` (pure, unit-tested), the
//! directive handlers in `directives.rs` (the configuration's FFI edge).
//!
//! Ownership: `MainConf` and `LocConf` are allocated in the configuration pool by `ngx-rust`
//! (which registers a cleanup that drops them), so they may own Rust values. They are written
//! while the master parses the configuration and only read afterwards, in the workers.
//! Nothing here starts Python.

use core::ptr;
use std::path::PathBuf;

use ngx::ffi::{
    ngx_command_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_FLAG, NGX_CONF_NOARGS, NGX_CONF_TAKE1,
    NGX_CONF_TAKE12, NGX_CONF_TAKE23, NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET,
    NGX_HTTP_MAIN_CONF, NGX_HTTP_MAIN_CONF_OFFSET, NGX_HTTP_SRV_CONF,
};
use ngx::http::{Merge, MergeConfigError};

pub mod directives;
pub mod parse;

use directives::*;

/// What `wsgi_app` names: a script file or an importable module, and the callable in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    pub source: AppSource,
    pub callable: String,
    /// `create_app("production")`: the callable is a factory, called once per worker with
    /// these literal arguments (the text from `(` to `)`, checked by `parse_call_args`).
    pub factory_args: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    /// An absolute path to a Python file, loaded under a module name derived from the path.
    Script(PathBuf),
    /// A dotted module name, imported from `sys.path`.
    Module(String),
}

impl AppSpec {
    /// How the application is named in log messages: as the user wrote it, made absolute.
    pub fn display(&self) -> String {
        let call = self.factory_args.as_deref().unwrap_or("");
        match &self.source {
            AppSource::Script(p) => format!("{}:{}{call}", p.display(), self.callable),
            AppSource::Module(m) => format!("{}:{}{call}", m, self.callable),
        }
    }
}

/// http-level settings: one interpreter per worker, so these are per process.
#[derive(Debug, Default)]
pub struct MainConf {
    pub python_home: Option<PathBuf>,
    pub python_path: Vec<PathBuf>,
    /// Every application named by a `wsgi_app` anywhere in the configuration; locations
    /// refer to them by index. Identical specs share one entry (and one loaded app).
    pub apps: Vec<AppSpec>,
    /// `wsgi_threads`: Python threads per worker; 0 runs applications on the event loop.
    pub threads: Option<usize>,
    /// `wsgi_queue`: requests that may wait for a thread, per worker.
    pub queue: Option<usize>,
    /// `wsgi_max_requests N [jitter]`.
    pub max_requests: Option<(u64, u64)>,
    /// `wsgi_max_rss`, bytes.
    pub max_rss: Option<u64>,
    /// `wsgi_max_lifetime`, milliseconds.
    pub max_lifetime_ms: Option<u64>,
    /// `wsgi_worker_start` / `wsgi_worker_stop`: (module, callable).
    pub worker_start: Option<(String, String)>,
    pub worker_stop: Option<(String, String)>,
    /// Some location has `wsgi_status`.
    pub status_used: bool,
    /// The status zone (see `worker.rs`).
    pub zone: Option<core::ptr::NonNull<ngx::ffi::ngx_shm_zone_t>>,
}

pub const DEFAULT_THREADS: usize = 16;
pub const DEFAULT_QUEUE: usize = 256;
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;

impl MainConf {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or(DEFAULT_THREADS)
    }

    pub fn queue(&self) -> usize {
        self.queue.unwrap_or(DEFAULT_QUEUE)
    }
}

#[derive(Debug, Default, Clone)]
pub struct LocConf {
    /// Index into `MainConf::apps`. Not inherited: like `proxy_pass`, `wsgi_app` makes the
    /// location it appears in a WSGI location, not its nested locations.
    pub app: Option<usize>,
    /// `SCRIPT_NAME`, normalised: no trailing slash, `None` when unset.
    pub script_name: Option<String>,
    pub script_name_set: bool,
    /// `wsgi_timeout` in milliseconds (0: none).
    pub timeout_ms: Option<u64>,
    /// `wsgi_max_header_size`: the most an application's status line and headers may take.
    pub max_header_size: Option<usize>,
    /// `wsgi_param`s of this level; a level without any inherits its parent's (as
    /// `uwsgi_param` does).
    pub params: Option<Vec<Param>>,
    /// `wsgi_intercept_errors`.
    pub intercept_errors: Option<bool>,
    /// `wsgi_ignore_headers`: `nginx::output::accel` bits; inherited when unset.
    pub ignore_headers_set: bool,
    pub ignore_headers: u32,
}

/// One `wsgi_param NAME VALUE [if_not_empty]`: the value is an nginx complex value (with
/// variables), compiled into the configuration pool and evaluated per request on the loop.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub value: *mut ngx::ffi::ngx_http_complex_value_t,
    pub if_not_empty: bool,
}

pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;

impl LocConf {
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS)
    }

    pub fn max_header_size(&self) -> usize {
        self.max_header_size.unwrap_or(DEFAULT_MAX_HEADER_SIZE)
    }
}

impl Merge for LocConf {
    fn merge(&mut self, prev: &LocConf) -> Result<(), MergeConfigError> {
        if !self.script_name_set {
            self.script_name = prev.script_name.clone();
            self.script_name_set = prev.script_name_set;
        }
        if self.timeout_ms.is_none() {
            self.timeout_ms = prev.timeout_ms;
        }
        if self.max_header_size.is_none() {
            self.max_header_size = prev.max_header_size;
        }
        if self.params.is_none() {
            self.params = prev.params.clone();
        }
        if self.intercept_errors.is_none() {
            self.intercept_errors = prev.intercept_errors;
        }
        if !self.ignore_headers_set {
            self.ignore_headers = prev.ignore_headers;
            self.ignore_headers_set = prev.ignore_headers_set;
        }
        Ok(())
    }
}

const MAIN: u32 = NGX_HTTP_MAIN_CONF;
const ANY: u32 = NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF;

/// One entry of the directive table.
const fn command(
    name: &'static core::ffi::CStr,
    where_: u32,
    args: u32,
    set: unsafe extern "C" fn(
        *mut ngx::ffi::ngx_conf_t,
        *mut ngx_command_t,
        *mut core::ffi::c_void,
    ) -> *mut core::ffi::c_char,
) -> ngx_command_t {
    let conf = if where_ == MAIN {
        NGX_HTTP_MAIN_CONF_OFFSET
    } else {
        NGX_HTTP_LOC_CONF_OFFSET
    };
    ngx_command_t {
        // NUL-terminated: nginx compares names with strcmp.
        name: ngx::ffi::ngx_str_t {
            len: name.to_bytes().len(),
            data: name.as_ptr() as *mut u8,
        },
        type_: (where_ | args) as ngx_uint_t,
        set: Some(set),
        conf,
        offset: 0,
        post: ptr::null_mut(),
    }
}

/// The directive table, sized by its own entries, ending with nginx's null command.
macro_rules! command_table {
    ($($entry:expr,)*) => {
        const COUNT: usize = [$(stringify!($entry)),*].len();
        /// The directives, as nginx reads them (`lib.rs` points the module at them).
        pub static mut COMMANDS: [ngx_command_t; COUNT + 1] = [$($entry,)* ngx_command_t::empty()];
    };
}

command_table! {
    command(c"wsgi_app", NGX_HTTP_LOC_CONF, NGX_CONF_TAKE1, set_app),
    command(c"wsgi_script_name", ANY, NGX_CONF_TAKE1, set_script_name),
    command(c"wsgi_python_home", MAIN, NGX_CONF_TAKE1, set_python_home),
    command(c"wsgi_python_path", MAIN, NGX_CONF_1MORE, set_python_path),
    command(c"wsgi_threads", MAIN, NGX_CONF_TAKE1, set_threads),
    command(c"wsgi_queue", MAIN, NGX_CONF_TAKE1, set_queue),
    command(c"wsgi_timeout", ANY, NGX_CONF_TAKE1, set_timeout),
    command(c"wsgi_max_header_size", ANY, NGX_CONF_TAKE1, set_max_header_size),
    command(c"wsgi_param", ANY, NGX_CONF_TAKE23, set_param),
    command(c"wsgi_intercept_errors", ANY, NGX_CONF_FLAG, set_intercept_errors),
    command(c"wsgi_ignore_headers", ANY, NGX_CONF_1MORE, set_ignore_headers),
    command(c"wsgi_max_requests", MAIN, NGX_CONF_TAKE12, set_max_requests),
    command(c"wsgi_max_rss", MAIN, NGX_CONF_TAKE1, set_max_rss),
    command(c"wsgi_max_lifetime", MAIN, NGX_CONF_TAKE1, set_max_lifetime),
    command(c"wsgi_worker_start", MAIN, NGX_CONF_TAKE1, set_worker_start),
    command(c"wsgi_worker_stop", MAIN, NGX_CONF_TAKE1, set_worker_stop),
    command(c"wsgi_status", NGX_HTTP_LOC_CONF, NGX_CONF_NOARGS, set_status),
}

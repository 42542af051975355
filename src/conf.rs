//! Directives, their parsing and merging.
//!
//! Ownership: `MainConf` and `LocConf` are allocated in the configuration pool by `ngx-rust`
//! (which registers a cleanup that drops them), so they may own Rust values. They are written
//! while the master parses the configuration and only read afterwards, in the workers.
//!
//! Every directive handler reports problems the way nginx's own do: `[emerg]` through
//! `ngx_conf_log_error`, which appends the file and line.

use core::ffi::{c_char, c_void};
use core::ptr;
use std::path::{Path, PathBuf};

use ngx::core::NGX_CONF_ERROR;
use ngx::ffi::{
    ngx_command_t, ngx_conf_t, ngx_str_t, ngx_uint_t, NGX_CONF_1MORE, NGX_CONF_NOARGS,
    NGX_CONF_TAKE1, NGX_CONF_TAKE12,
    NGX_HTTP_LOC_CONF, NGX_HTTP_LOC_CONF_OFFSET, NGX_HTTP_MAIN_CONF, NGX_HTTP_SRV_CONF, NGX_HTTP_MAIN_CONF_OFFSET,
    NGX_LOG_EMERG,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, Merge, MergeConfigError, NgxHttpCoreModule};
use ngx::{ngx_conf_log_error, ngx_string};

use crate::Module;

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
        Ok(())
    }
}

pub const COMMAND_COUNT: usize = 14;

/// The directive table; `lib.rs` keeps it in a static for nginx.
pub const fn commands() -> [ngx_command_t; COMMAND_COUNT + 1] {
    [
        ngx_command_t {
            name: ngx_string!("wsgi_app"),
            type_: (NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_app),
            conf: NGX_HTTP_LOC_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_script_name"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_script_name),
            conf: NGX_HTTP_LOC_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_python_home"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_python_home),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_python_path"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE) as ngx_uint_t,
            set: Some(set_python_path),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_threads"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_threads),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_queue"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_queue),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_timeout"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_timeout),
            conf: NGX_HTTP_LOC_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_max_header_size"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_max_header_size),
            conf: NGX_HTTP_LOC_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_max_requests"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE12) as ngx_uint_t,
            set: Some(set_max_requests),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_max_rss"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_max_rss),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_max_lifetime"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_max_lifetime),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_worker_start"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_worker_hook),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_worker_stop"),
            type_: (NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1) as ngx_uint_t,
            set: Some(set_worker_hook),
            conf: NGX_HTTP_MAIN_CONF_OFFSET,
            offset: 1,
            post: ptr::null_mut(),
        },
        ngx_command_t {
            name: ngx_string!("wsgi_status"),
            type_: (NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS) as ngx_uint_t,
            set: Some(set_status),
            conf: NGX_HTTP_LOC_CONF_OFFSET,
            offset: 0,
            post: ptr::null_mut(),
        },
        ngx_command_t::empty(),
    ]
}

// ---------------------------------------------------------------------------------------
// Parsing (safe, unit-tested)
// ---------------------------------------------------------------------------------------

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_alphabetic() => {}
        _ => return false,
    }
    chars.all(|c| c == '_' || c.is_alphanumeric())
}

fn is_dotted_name(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_identifier)
}

/// Parses `PATH_OR_MODULE[:CALLABLE]`, where CALLABLE may be a factory call with literal
/// arguments (`create_app()`, `create_app("production", debug=False)`, as gunicorn accepts).
/// A value with a `/` or ending in `.py` is a script; relative script paths are resolved
/// against `prefix` (nginx's `-p`), as nginx does for its other paths.
pub fn parse_app_spec(value: &str, prefix: &Path) -> Result<AppSpec, String> {
    if value.is_empty() {
        return Err("empty application".into());
    }
    // A call's arguments may hold ':' and '/': split them off first.
    let (head, factory_args) = match value.find('(') {
        Some(open) if value.ends_with(')') => {
            let args = &value[open..];
            parse_call_args(args)?;
            (&value[..open], Some(args.to_string()))
        }
        Some(_) => return Err(format!("invalid application \"{value}\": a factory call must end with \")\"")),
        None => (value, None),
    };
    let (target, callable) = match head.rsplit_once(':') {
        Some((t, c)) if is_dotted_name(c) => (t, c.to_string()),
        Some((_, c)) if !head.contains('/') || factory_args.is_some() => {
            return Err(format!("invalid callable name \"{c}\""));
        }
        _ if factory_args.is_some() => return Err(format!("invalid application \"{value}\": a factory needs MODULE:NAME(...)")),
        _ => (head, "application".to_string()),
    };
    if target.contains('/') || target.ends_with(".py") {
        let path = Path::new(target);
        let path = if path.is_absolute() { path.to_path_buf() } else { prefix.join(path) };
        return Ok(AppSpec { source: AppSource::Script(path), callable, factory_args });
    }
    if !is_dotted_name(target) {
        return Err(format!("invalid module name \"{target}\""));
    }
    Ok(AppSpec { source: AppSource::Module(target.to_string()), callable, factory_args })
}

/// Checks `(arg, ..., name=arg)` where every argument is a Python literal: a string, a
/// number, `True`, `False` or `None`. The worker evaluates it with `ast.literal_eval`.
pub fn parse_call_args(text: &str) -> Result<(), String> {
    let bad = |why: &str| format!("invalid factory arguments \"{text}\": {why}");
    let b = text.as_bytes();
    let mut i = 1; // past '('
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let mut keywords = false;
    loop {
        skip_ws(&mut i);
        if i < b.len() && b[i] == b')' {
            i += 1;
            break;
        }
        // An optional `name=`.
        let start = i;
        while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
            i += 1;
        }
        let word = &text[start..i];
        let mut j = i;
        skip_ws(&mut j);
        if !word.is_empty() && j < b.len() && b[j] == b'=' && b.get(j + 1) != Some(&b'=') {
            if !is_identifier(word) {
                return Err(bad("bad keyword name"));
            }
            keywords = true;
            i = j + 1;
            skip_ws(&mut i);
        } else if keywords {
            return Err(bad("positional argument after keyword argument"));
        } else {
            i = start;
        }
        // The literal.
        match b.get(i) {
            Some(&q) if q == b'"' || q == b'\'' => {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(bad("unterminated string")),
                        Some(b'\\') => i += 2,
                        Some(&c) if c == q => {
                            i += 1;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' || *c == b'+' || *c == b'.' => {
                let start = i;
                i += 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_'
                    || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                let num = text[start..i].replace('_', "");
                let digits = num.trim_start_matches(['+', '-']);
                let hex = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X"));
                let valid = match hex {
                    Some(h) => u64::from_str_radix(h, 16).is_ok(),
                    None => num.parse::<f64>().is_ok() && !digits.starts_with(['i', 'n', 'I', 'N']),
                };
                if !valid {
                    return Err(bad("bad number"));
                }
            }
            _ => {
                let start = i;
                while i < b.len() && b[i].is_ascii_alphabetic() {
                    i += 1;
                }
                if !matches!(&text[start..i], "True" | "False" | "None") {
                    return Err(bad("only literals (strings, numbers, True, False, None) may be passed"));
                }
            }
        }
        skip_ws(&mut i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b')') => {
                i += 1;
                break;
            }
            _ => return Err(bad("expected \",\" or \")\"")),
        }
    }
    if i != b.len() {
        return Err(bad("text after \")\""));
    }
    Ok(())
}

/// The `major.minor` of a virtualenv's Python, from its `pyvenv.cfg` (`version = 3.12.1`,
/// or virtualenv's `version_info = 3.12.1.final.0`).
pub fn venv_python_version(cfg: &str) -> Option<(u32, u32)> {
    for line in cfg.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        if matches!(key.trim(), "version" | "version_info") {
            let mut parts = value.trim().split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            return Some((major, minor));
        }
    }
    None
}

/// The `major.minor` of the Python this module embeds (readable before it starts).
pub fn embedded_python_version() -> (u32, u32) {
    // SAFETY: Py_GetVersion returns a static string and may be called before initialization.
    let v = unsafe { std::ffi::CStr::from_ptr(pyo3::ffi::Py_GetVersion()) }.to_string_lossy();
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Refuses a virtualenv made from another Python than the one this module embeds: its
/// packages (and C extensions) are for that Python, and would fail in confusing ways.
pub fn check_venv_version(home: &Path) -> Result<(), String> {
    let Ok(cfg) = std::fs::read_to_string(home.join("pyvenv.cfg")) else { return Ok(()) };
    let Some((major, minor)) = venv_python_version(&cfg) else { return Ok(()) };
    let (emajor, eminor) = embedded_python_version();
    if (major, minor) != (emajor, eminor) {
        return Err(format!(
            "the virtualenv \"{}\" is for Python {major}.{minor}, but this module embeds Python {emajor}.{eminor}: \
             recreate the virtualenv with python{emajor}.{eminor}, or use a module built for Python {major}.{minor}",
            home.display()
        ));
    }
    Ok(())
}

/// Normalises a `wsgi_script_name` value: must start with `/`; a trailing slash is dropped
/// (so `/` means the empty SCRIPT_NAME of an application mounted at the root).
pub fn parse_script_name(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err(format!("must start with \"/\", not \"{value}\""));
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("contains control characters".into());
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// Parses an nginx time value (`500ms`, `30s`, `5m`, `1h`, `1d`; a bare number is seconds,
/// units may be combined: `1m30s`) into milliseconds.
pub fn parse_time_ms(value: &str) -> Result<u64, String> {
    if value.is_empty() {
        return Err("empty time".into());
    }
    let bad = || format!("invalid time \"{value}\"");
    let mut total: u64 = 0;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total = n.checked_mul(ms).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Parses an nginx size (`512`, `64k`, `512m`, `2g`) into bytes.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let bad = || format!("invalid size \"{value}\"");
    let (digits, mult) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&value[..value.len() - 1], 1 << 30),
        _ => (value, 1),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(mult).ok_or_else(bad)
}

/// Parses `module:callable` for the worker hooks.
pub fn parse_hook(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((m, c)) if is_dotted_name(m) && is_dotted_name(c) => Ok((m.to_string(), c.to_string())),
        _ => Err(format!("\"{value}\" is not MODULE:CALLABLE")),
    }
}

/// Parses a count for `wsgi_threads` / `wsgi_queue`.
pub fn parse_count(value: &str, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("\"{value}\" is more than {max}")),
        Err(_) => Err(format!("invalid number \"{value}\"")),
    }
}

// ---------------------------------------------------------------------------------------
// Directive handlers (the FFI edge of configuration)
// ---------------------------------------------------------------------------------------

/// The directive's arguments, `args[0]` being its name.
///
/// # Safety
/// `cf` must be the configuration being parsed, as passed to a directive handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Vec<&'a str> {
    // SAFETY: during a directive handler `cf->args` is an array of `ngx_str_t` that lives in
    // the configuration pool for the whole parse.
    let arr = unsafe { &*(*cf).args };
    let elts = unsafe { core::slice::from_raw_parts(arr.elts as *const ngx_str_t, arr.nelts) };
    // Non-UTF-8 arguments are turned into an empty string, which every handler rejects.
    elts.iter()
        .map(|s| core::str::from_utf8(s.as_bytes()).unwrap_or(""))
        .collect()
}

/// nginx's prefix (`-p`), against which relative paths in the configuration are resolved.
///
/// # Safety
/// `cf` must be the configuration being parsed.
unsafe fn prefix(cf: *mut ngx_conf_t) -> PathBuf {
    // SAFETY: the cycle and its prefix live for the whole configuration parse.
    let p = unsafe { &(*(*cf).cycle).prefix };
    PathBuf::from(String::from_utf8_lossy(p.as_bytes()).into_owned())
}

fn conf_ok() -> *mut c_char {
    ptr::null_mut()
}

fn conf_error() -> *mut c_char {
    NGX_CONF_ERROR as *mut c_char
}

extern "C" fn set_app(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the parse state and this module's location
    // configuration (NGX_HTTP_LOC_CONF_OFFSET), which `create_loc_conf` made a `LocConf`.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    if lcf.app.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    let (value, prefix) = unsafe { (args(cf)[1], prefix(cf)) };
    let spec = match parse_app_spec(value, &prefix) {
        Ok(spec) => spec,
        Err(e) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "invalid \"wsgi_app\" value \"{value}\": {e}");
            return conf_error();
        }
    };
    if let AppSource::Script(path) = &spec.source {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"wsgi_app\" script \"{}\" is not a regular file",
                    path.display()
                );
                return conf_error();
            }
            Err(e) => {
                ngx_conf_log_error!(
                    NGX_LOG_EMERG,
                    cf,
                    "\"wsgi_app\" script \"{}\" cannot be opened: {e}",
                    path.display()
                );
                return conf_error();
            }
        }
    }

    // SAFETY: the http main configuration exists while locations are parsed.
    let Some(mcf) = (unsafe { Module::main_conf_mut(&*cf) }) else {
        return conf_error();
    };
    let index = match mcf.apps.iter().position(|a| *a == spec) {
        Some(i) => i,
        None => {
            mcf.apps.push(spec);
            mcf.apps.len() - 1
        }
    };
    lcf.app = Some(index);

    // SAFETY: the core location configuration of the location being parsed.
    let Some(clcf) = (unsafe { NgxHttpCoreModule::location_conf_mut(&*cf) }) else {
        return conf_error();
    };
    clcf.handler = Some(crate::handler::wsgi_handler);
    conf_ok()
}

extern "C" fn set_script_name(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in `set_app`.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    if lcf.script_name_set {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    let value = unsafe { args(cf)[1] };
    match parse_script_name(value) {
        Ok(s) => {
            lcf.script_name = Some(s);
            lcf.script_name_set = true;
            conf_ok()
        }
        Err(e) => {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "invalid \"wsgi_script_name\" value: {e}");
            conf_error()
        }
    }
}

extern "C" fn set_python_home(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    if mcf.python_home.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    let (value, prefix) = unsafe { (args(cf)[1], prefix(cf)) };
    let dir = prefix.join(value);
    if !dir.is_dir() {
        ngx_conf_log_error!(
            NGX_LOG_EMERG,
            cf,
            "\"wsgi_python_home\" directory \"{}\" does not exist",
            dir.display()
        );
        return conf_error();
    }
    if let Err(e) = check_venv_version(&dir) {
        ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"wsgi_python_home\": {e}");
        return conf_error();
    }
    mcf.python_home = Some(dir);
    conf_ok()
}

extern "C" fn set_python_path(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in `set_python_home`.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    let (values, prefix) = unsafe { (args(cf), prefix(cf)) };
    for value in &values[1..] {
        if value.is_empty() {
            ngx_conf_log_error!(NGX_LOG_EMERG, cf, "invalid empty \"wsgi_python_path\" value");
            return conf_error();
        }
        mcf.python_path.push(prefix.join(value));
    }
    conf_ok()
}

fn emerg(cf: *mut ngx_conf_t, msg: String) -> *mut c_char {
    ngx_conf_log_error!(NGX_LOG_EMERG, cf, "{msg}");
    conf_error()
}

/// The common shape of a one-value directive: refuse a duplicate, parse the argument, report
/// a bad value as `invalid "NAME" value: ...`.
fn set_once<T>(
    cf: *mut ngx_conf_t,
    name: &str,
    slot: &mut Option<T>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> *mut c_char {
    if slot.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    // SAFETY: called from a directive handler with its parse state.
    let value = unsafe { args(cf)[1] };
    match parse(value) {
        Ok(v) => {
            *slot = Some(v);
            conf_ok()
        }
        Err(e) => emerg(cf, format!("invalid \"{name}\" value: {e}")),
    }
}

extern "C" fn set_threads(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_threads", &mut mcf.threads, |v| parse_count(v, 4096))
}

extern "C" fn set_queue(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_queue", &mut mcf.queue, |v| parse_count(v, 1_000_000))
}

extern "C" fn set_timeout(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    set_once(cf, "wsgi_timeout", &mut lcf.timeout_ms, parse_time_ms)
}

extern "C" fn set_max_header_size(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    set_once(cf, "wsgi_max_header_size", &mut lcf.max_header_size, |v| match parse_size(v)? {
        n if n >= 1024 && n <= (1 << 30) => Ok(n as usize),
        _ => Err(format!("\"{v}\": between 1k and 1g")),
    })
}

extern "C" fn set_max_requests(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    if mcf.max_requests.is_some() {
        return c"is duplicate".as_ptr() as *mut c_char;
    }
    let values = unsafe { args(cf) };
    let n = match values[1].parse::<u64>() {
        Ok(n) if n > 0 => n,
        _ => return emerg(cf, format!("invalid \"wsgi_max_requests\" value \"{}\"", values[1])),
    };
    let jitter = match values.get(2).map(|j| j.parse::<u64>()) {
        None => 0,
        Some(Ok(j)) => j,
        Some(Err(_)) => return emerg(cf, format!("invalid \"wsgi_max_requests\" jitter \"{}\"", values[2])),
    };
    mcf.max_requests = Some((n, jitter));
    conf_ok()
}

extern "C" fn set_max_rss(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_max_rss", &mut mcf.max_rss, |v| match parse_size(v)? {
        0 => Err("\"0\"".into()),
        n => Ok(n),
    })
}

extern "C" fn set_max_lifetime(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_max_lifetime", &mut mcf.max_lifetime_ms, |v| match parse_time_ms(v)? {
        ms if ms >= 1000 => Ok(ms),
        _ => Err(format!("\"{v}\": at least 1s")),
    })
}

extern "C" fn set_worker_hook(cf: *mut ngx_conf_t, cmd: *mut ngx_command_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration and the command entry.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    let stop = unsafe { (*cmd).offset } == 1;
    let name = if stop { "wsgi_worker_stop" } else { "wsgi_worker_start" };
    let slot = if stop { &mut mcf.worker_stop } else { &mut mcf.worker_start };
    set_once(cf, name, slot, parse_hook)
}

extern "C" fn set_status(cf: *mut ngx_conf_t, _cmd: *mut ngx_command_t, _conf: *mut c_void) -> *mut c_char {
    // SAFETY: the http main configuration exists while locations are parsed.
    let Some(mcf) = (unsafe { Module::main_conf_mut(&*cf) }) else {
        return conf_error();
    };
    mcf.status_used = true;
    // SAFETY: the core location configuration of the location being parsed.
    let Some(clcf) = (unsafe { NgxHttpCoreModule::location_conf_mut(&*cf) }) else {
        return conf_error();
    };
    clcf.handler = Some(crate::worker::status_handler);
    conf_ok()
}

/// `init_main_conf`: creates the status zone once the http block is parsed, if any location
/// uses the module.
pub extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    if mcf.apps.is_empty() && !mcf.status_used {
        return conf_ok();
    }
    // SAFETY: called by nginx during the parse, with its configuration.
    match unsafe { crate::worker::add_zone(cf, mcf) } {
        Ok(()) => conf_ok(),
        Err(()) => conf_error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_paths_default_to_application() {
        let s = parse_app_spec("/srv/blog/wsgi.py", Path::new("/p")).unwrap();
        assert_eq!(s.source, AppSource::Script("/srv/blog/wsgi.py".into()));
        assert_eq!(s.callable, "application");
    }

    #[test]
    fn relative_scripts_resolve_against_prefix() {
        let s = parse_app_spec("apps/wsgi.py:app", Path::new("/p")).unwrap();
        assert_eq!(s.source, AppSource::Script("/p/apps/wsgi.py".into()));
        assert_eq!(s.callable, "app");
    }

    #[test]
    fn modules_with_callables() {
        let s = parse_app_spec("shop.wsgi:app", Path::new("/")).unwrap();
        assert_eq!(s.source, AppSource::Module("shop.wsgi".into()));
        assert_eq!(s.callable, "app");
        let s = parse_app_spec("shop.wsgi", Path::new("/")).unwrap();
        assert_eq!(s.callable, "application");
    }

    #[test]
    fn factories() {
        let s = parse_app_spec("pkg.app:create_app()", Path::new("/")).unwrap();
        assert_eq!(s.source, AppSource::Module("pkg.app".into()));
        assert_eq!(s.callable, "create_app");
        assert_eq!(s.factory_args.as_deref(), Some("()"));
        let s = parse_app_spec("pkg.app:create_app(\"prod:a/b\", 2, debug=False, x=-1.5e3)", Path::new("/")).unwrap();
        assert_eq!(s.factory_args.as_deref(), Some("(\"prod:a/b\", 2, debug=False, x=-1.5e3)"));
        let s = parse_app_spec("/srv/app.py:make('x',)", Path::new("/")).unwrap();
        assert_eq!(s.source, AppSource::Script("/srv/app.py".into()));
        for bad in ["pkg:f(", "pkg:f(x)", "pkg:f(os.system('x'))", "pkg:f(a=1, 2)", "pkg:f('x') y", "pkg(1)", "pkg:f('x)"] {
            assert!(parse_app_spec(bad, Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn venv_versions() {
        assert_eq!(venv_python_version("home = /usr/bin\nversion = 3.12.1\n"), Some((3, 12)));
        assert_eq!(venv_python_version("version_info = 3.13.0.final.0\n"), Some((3, 13)));
        assert_eq!(venv_python_version("home = /usr\n"), None);
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(parse_app_spec("shop-x.wsgi", Path::new("/")).is_err());
        assert!(parse_app_spec("shop.wsgi:1app", Path::new("/")).is_err());
        assert!(parse_app_spec("", Path::new("/")).is_err());
        assert!(parse_app_spec("shop..wsgi", Path::new("/")).is_err());
    }

    #[test]
    fn times() {
        assert_eq!(parse_time_ms("30s"), Ok(30_000));
        assert_eq!(parse_time_ms("30"), Ok(30_000));
        assert_eq!(parse_time_ms("500ms"), Ok(500));
        assert_eq!(parse_time_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_time_ms("0"), Ok(0));
        assert!(parse_time_ms("abc").is_err());
        assert!(parse_time_ms("5x").is_err());
        assert!(parse_time_ms("").is_err());
    }

    #[test]
    fn sizes_and_hooks() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("m").is_err());
        assert_eq!(parse_hook("app.hooks:start"), Ok(("app.hooks".into(), "start".into())));
        assert!(parse_hook("app.hooks").is_err());
        assert!(parse_hook("/x.py:start").is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("32", 100), Ok(32));
        assert!(parse_count("-1", 100).is_err());
        assert!(parse_count("101", 100).is_err());
    }

    #[test]
    fn script_names() {
        assert_eq!(parse_script_name("/shop").unwrap(), "/shop");
        assert_eq!(parse_script_name("/shop/").unwrap(), "/shop");
        assert_eq!(parse_script_name("/").unwrap(), "");
        assert!(parse_script_name("shop").is_err());
    }
}

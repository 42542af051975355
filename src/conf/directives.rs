//! Directive handlers: the configuration's FFI edge. Each reports problems the way nginx's
//! own do, `[emerg]` through `ngx_conf_log_error` (which appends the file and line), and
//! reads times and sizes with nginx's own parsers.

use core::ffi::{c_char, c_void};
use core::ptr;
use std::path::PathBuf;

use ngx::core::NGX_CONF_ERROR;
use ngx::ffi::{ngx_command_t, ngx_conf_t, ngx_str_t, NGX_LOG_EMERG};
use ngx::http::{HttpModuleLocationConf, HttpModuleMainConf, NgxHttpCoreModule};
use ngx::ngx_conf_log_error;

use super::parse::*;
use super::{AppSource, LocConf, MainConf};
use crate::Module;

/// The directive's arguments, `args[0]` being its name.
///
/// # Safety
/// `cf` must be the configuration being parsed, as passed to a directive handler.
unsafe fn args<'a>(cf: *mut ngx_conf_t) -> Vec<&'a str> {
    // SAFETY: during a directive handler `cf->args` is an array of `ngx_str_t` that lives in
    // the configuration pool for the whole parse.
    let arr = unsafe { &*(*cf).args };
    // SAFETY: the array holds `nelts` initialised `ngx_str_t` values.
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

/// `ngx_parse_time` of a directive value, in milliseconds.
fn nginx_time_ms(value: &str) -> Result<u64, String> {
    let mut text = ngx_str_t {
        len: value.len(),
        data: value.as_ptr() as *mut u8,
    };
    // SAFETY: nginx's parser only reads the `len` bytes `text` points at.
    let ms = unsafe { ngx::ffi::ngx_parse_time(&mut text, 0) };
    if ms < 0 {
        return Err(format!("invalid time \"{value}\""));
    }
    Ok(ms as u64)
}

/// `ngx_parse_size` of a directive value, in bytes.
fn nginx_size(value: &str) -> Result<u64, String> {
    let mut text = ngx_str_t {
        len: value.len(),
        data: value.as_ptr() as *mut u8,
    };
    // SAFETY: nginx's parser only reads the `len` bytes `text` points at.
    let n = unsafe { ngx::ffi::ngx_parse_size(&mut text) };
    if n < 0 {
        return Err(format!("invalid size \"{value}\""));
    }
    Ok(n as u64)
}

/// nginx's answer to a directive given twice in one block (it adds the name, file and line).
fn duplicate() -> *mut c_char {
    c"is duplicate".as_ptr() as *mut c_char
}

fn conf_ok() -> *mut c_char {
    ptr::null_mut()
}

fn conf_error() -> *mut c_char {
    NGX_CONF_ERROR as *mut c_char
}

pub(super) extern "C" fn set_app(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx calls directive handlers with the parse state and this module's location
    // configuration (NGX_HTTP_LOC_CONF_OFFSET), which `create_loc_conf` made a `LocConf`.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    if lcf.app.is_some() {
        return duplicate();
    }
    // SAFETY: a directive handler's parse state; TAKE1 gives one argument after the name.
    let (value, prefix) = unsafe { (args(cf)[1], prefix(cf)) };
    let spec = match parse_app_spec(value, &prefix) {
        Ok(spec) => spec,
        Err(e) => {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "invalid \"wsgi_app\" value \"{value}\": {e}"
            );
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
    clcf.handler = Some(crate::nginx::handler::wsgi_handler);
    conf_ok()
}

pub(super) extern "C" fn set_script_name(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in `set_app`.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    if lcf.script_name_set {
        return duplicate();
    }
    // SAFETY: a directive handler's parse state; TAKE1 gives one argument after the name.
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

pub(super) extern "C" fn set_python_home(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration (NGX_HTTP_MAIN_CONF_OFFSET).
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    if mcf.python_home.is_some() {
        return duplicate();
    }
    // SAFETY: a directive handler's parse state; TAKE1 gives one argument after the name.
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
    if let Err(e) = check_venv_version(&dir, crate::python::interp::embedded_version()) {
        ngx_conf_log_error!(NGX_LOG_EMERG, cf, "\"wsgi_python_home\": {e}");
        return conf_error();
    }
    mcf.python_home = Some(dir);
    conf_ok()
}

pub(super) extern "C" fn set_python_path(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: as in `set_python_home`.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    // SAFETY: a directive handler's parse state.
    let (values, prefix) = unsafe { (args(cf), prefix(cf)) };
    for value in &values[1..] {
        if value.is_empty() {
            ngx_conf_log_error!(
                NGX_LOG_EMERG,
                cf,
                "invalid empty \"wsgi_python_path\" value"
            );
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
        return duplicate();
    }
    // SAFETY: called from a directive handler with its parse state (one argument).
    let value = unsafe { args(cf)[1] };
    match parse(value) {
        Ok(v) => {
            *slot = Some(v);
            conf_ok()
        }
        Err(e) => emerg(cf, format!("invalid \"{name}\" value: {e}")),
    }
}

pub(super) extern "C" fn set_threads(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_threads", &mut mcf.threads, |v| {
        parse_count(v, 4096)
    })
}

pub(super) extern "C" fn set_queue(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_queue", &mut mcf.queue, |v| {
        parse_count(v, 1_000_000)
    })
}

pub(super) extern "C" fn set_timeout(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    set_once(cf, "wsgi_timeout", &mut lcf.timeout_ms, nginx_time_ms)
}

pub(super) extern "C" fn set_max_header_size(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    set_once(
        cf,
        "wsgi_max_header_size",
        &mut lcf.max_header_size,
        |v| match nginx_size(v)? {
            n if (1024..=(1 << 30)).contains(&n) => Ok(n as usize),
            _ => Err(format!("\"{v}\": between 1k and 1g")),
        },
    )
}

pub(super) extern "C" fn set_param(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    // SAFETY: a directive handler's parse state (TAKE23: two or three arguments).
    let values = unsafe { args(cf) };
    let name = values[1];
    if let Err(e) = parse_param_name(name) {
        return emerg(cf, format!("invalid \"wsgi_param\" name: {e}"));
    }
    let if_not_empty = match values.get(3) {
        None => false,
        Some(&"if_not_empty") => true,
        Some(other) => return emerg(cf, format!("invalid \"wsgi_param\" parameter \"{other}\"")),
    };
    // SAFETY: the parse state's own argument array and pool; nginx's compiler keeps what it
    // needs in the configuration pool, which lives as long as the configuration.
    let value = unsafe {
        let arg = ((*(*cf).args).elts as *mut ngx_str_t).add(2);
        let cv = ngx::ffi::ngx_pcalloc(
            (*cf).pool,
            core::mem::size_of::<ngx::ffi::ngx_http_complex_value_t>(),
        ) as *mut ngx::ffi::ngx_http_complex_value_t;
        if cv.is_null() {
            return conf_error();
        }
        let mut ccv: ngx::ffi::ngx_http_compile_complex_value_t = core::mem::zeroed();
        ccv.cf = cf;
        ccv.value = arg;
        ccv.complex_value = cv;
        if ngx::ffi::ngx_http_compile_complex_value(&mut ccv) != ngx::ffi::NGX_OK as isize {
            return conf_error();
        }
        cv
    };
    lcf.params.get_or_insert_with(Vec::new).push(super::Param {
        name: name.to_string(),
        value,
        if_not_empty,
    });
    conf_ok()
}

pub(super) extern "C" fn set_intercept_errors(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    set_once(
        cf,
        "wsgi_intercept_errors",
        &mut lcf.intercept_errors,
        |v| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            _ => Err(format!("\"{v}\", it must be \"on\" or \"off\"")),
        },
    )
}

pub(super) extern "C" fn set_ignore_headers(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's location configuration.
    let lcf = unsafe { &mut *(conf as *mut LocConf) };
    if lcf.ignore_headers_set {
        return duplicate();
    }
    // SAFETY: a directive handler's parse state.
    let values = unsafe { args(cf) };
    let mut bits = 0;
    for v in &values[1..] {
        match crate::nginx::output::accel::NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(v)) {
            Some((_, bit)) => bits |= bit,
            None => {
                return emerg(
                    cf,
                    format!("invalid \"wsgi_ignore_headers\" value \"{v}\": X-Accel-Redirect, X-Accel-Expires, X-Accel-Limit-Rate, X-Accel-Buffering or X-Accel-Charset"),
                )
            }
        }
    }
    lcf.ignore_headers = bits;
    lcf.ignore_headers_set = true;
    conf_ok()
}

pub(super) extern "C" fn set_max_requests(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    if mcf.max_requests.is_some() {
        return duplicate();
    }
    // SAFETY: a directive handler's parse state.
    let values = unsafe { args(cf) };
    let n = match values[1].parse::<u64>() {
        Ok(n) if n > 0 => n,
        _ => {
            return emerg(
                cf,
                format!("invalid \"wsgi_max_requests\" value \"{}\"", values[1]),
            )
        }
    };
    let jitter = match values.get(2).map(|j| j.parse::<u64>()) {
        None => 0,
        Some(Ok(j)) => j,
        Some(Err(_)) => {
            return emerg(
                cf,
                format!("invalid \"wsgi_max_requests\" jitter \"{}\"", values[2]),
            )
        }
    };
    mcf.max_requests = Some((n, jitter));
    conf_ok()
}

pub(super) extern "C" fn set_max_rss(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(
        cf,
        "wsgi_max_rss",
        &mut mcf.max_rss,
        |v| match nginx_size(v)? {
            0 => Err("\"0\"".into()),
            n => Ok(n),
        },
    )
}

pub(super) extern "C" fn set_max_lifetime(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(
        cf,
        "wsgi_max_lifetime",
        &mut mcf.max_lifetime_ms,
        |v| match nginx_time_ms(v)? {
            ms if ms >= 1000 => Ok(ms),
            _ => Err(format!("\"{v}\": at least 1s")),
        },
    )
}

pub(super) extern "C" fn set_worker_start(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_worker_start", &mut mcf.worker_start, parse_hook)
}

pub(super) extern "C" fn set_worker_stop(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    set_once(cf, "wsgi_worker_stop", &mut mcf.worker_stop, parse_hook)
}

pub(super) extern "C" fn set_status(
    cf: *mut ngx_conf_t,
    _cmd: *mut ngx_command_t,
    _conf: *mut c_void,
) -> *mut c_char {
    // SAFETY: the http main configuration exists while locations are parsed.
    let Some(mcf) = (unsafe { Module::main_conf_mut(&*cf) }) else {
        return conf_error();
    };
    mcf.status_used = true;
    // SAFETY: the core location configuration of the location being parsed.
    let Some(clcf) = (unsafe { NgxHttpCoreModule::location_conf_mut(&*cf) }) else {
        return conf_error();
    };
    clcf.handler = Some(crate::nginx::status::handler);
    conf_ok()
}

/// `init_main_conf`: creates the status zone once the http block is parsed, if any location
/// uses the module.
pub(crate) extern "C" fn init_main_conf(cf: *mut ngx_conf_t, conf: *mut c_void) -> *mut c_char {
    // SAFETY: nginx passes this module's main configuration.
    let mcf = unsafe { &mut *(conf as *mut MainConf) };
    if mcf.apps.is_empty() && !mcf.status_used {
        return conf_ok();
    }
    // SAFETY: called by nginx during the parse, with its configuration.
    match unsafe { crate::nginx::zone::add(cf) } {
        Some(zone) => {
            mcf.zone = Some(zone);
            conf_ok()
        }
        None => conf_error(),
    }
}

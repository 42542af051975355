//! `ngx_http_wsgi_module`: runs Python WSGI (PEP 3333) applications inside nginx workers.
//!
//! This file is wiring only: the module statics nginx looks up after `dlopen`, the HTTP module
//! context, and the process hooks. The tree follows the thread boundary: `conf/` (directives),
//! `nginx/` (the event loop's side), `python/` (the Python side, safe code), `bridge/` (the
//! only code that sees both), with `log.rs` and `stats.rs` shared.

use core::ffi::c_void;
use core::ptr::addr_of;

use ngx::ffi::{
    ngx_command_t, ngx_cycle_t, ngx_http_module_t, ngx_int_t, ngx_module_t, ngx_uint_t,
    NGX_HTTP_MODULE,
};
use ngx::http::{HttpModule, HttpModuleLocationConf, HttpModuleMainConf};

pub mod bridge;
pub mod conf;
pub mod log;
pub mod nginx;
pub mod python;
pub mod stats;

use nginx::recycle;
use python::{interp, pool};

/// The module type behind the `ngx-rust` traits.
pub struct Module;

impl HttpModule for Module {
    fn module() -> &'static ngx_module_t {
        // SAFETY: nginx writes the module's indices once, while loading the configuration in
        // the master; afterwards the static is only read.
        unsafe { &*addr_of!(ngx_http_wsgi_module) }
    }
}

// SAFETY: the main configuration slot of this module always holds a `conf::MainConf`
// (created by `create_main_conf`).
unsafe impl HttpModuleMainConf for Module {
    type MainConf = conf::MainConf;
}

// SAFETY: the location configuration slot always holds a `conf::LocConf`.
unsafe impl HttpModuleLocationConf for Module {
    type LocationConf = conf::LocConf;
}

static NGX_HTTP_WSGI_MODULE_CTX: ngx_http_module_t = ngx_http_module_t {
    preconfiguration: Some(preconfiguration),
    postconfiguration: Some(postconfiguration),
    create_main_conf: Some(Module::create_main_conf),
    init_main_conf: Some(conf::directives::init_main_conf),
    create_srv_conf: None,
    merge_srv_conf: None,
    create_loc_conf: Some(Module::create_loc_conf),
    merge_loc_conf: Some(Module::merge_loc_conf),
};

#[cfg(not(test))]
ngx::ngx_modules!(ngx_http_wsgi_module);

#[allow(non_upper_case_globals)]
#[cfg_attr(not(test), no_mangle, used)]
pub static mut ngx_http_wsgi_module: ngx_module_t = ngx_module_t {
    ctx: addr_of!(NGX_HTTP_WSGI_MODULE_CTX) as *mut c_void,
    // SAFETY: the command table is a static that nginx only reads.
    commands: unsafe { addr_of!(conf::COMMANDS[0]) as *mut ngx_command_t },
    type_: NGX_HTTP_MODULE as ngx_uint_t,
    init_process: Some(init_process),
    exit_process: Some(exit_process),
    ..ngx_module_t::default()
};

extern "C" fn preconfiguration(cf: *mut ngx::ffi::ngx_conf_t) -> ngx_int_t {
    // SAFETY: preconfiguration is where nginx modules add their variables.
    if unsafe { nginx::vars::add(cf) } {
        ngx::core::Status::NGX_OK.into()
    } else {
        ngx::core::Status::NGX_ERROR.into()
    }
}

extern "C" fn postconfiguration(_cf: *mut ngx::ffi::ngx_conf_t) -> ngx_int_t {
    // SAFETY: postconfiguration is where nginx modules join the filter chains.
    unsafe { recycle::install_header_filter() };
    ngx::core::Status::NGX_OK.into()
}

/// Starts Python in a worker, after the fork: each worker has its own interpreter, and the
/// master never has one, so a reload brings fresh interpreters and fresh application code.
extern "C" fn init_process(cycle: *mut ngx_cycle_t) -> ngx_int_t {
    // SAFETY: nginx passes the live cycle of this worker.
    let cycle = unsafe { &*cycle };
    // SAFETY: nginx sets its process type before running init_process hooks; the cache
    // manager and loader (helper processes) run these hooks too, but serve no requests.
    let process = unsafe { ngx::ffi::ngx_process } as u32;
    if process != ngx::ffi::NGX_PROCESS_WORKER && process != ngx::ffi::NGX_PROCESS_SINGLE {
        return ngx::core::Status::NGX_OK.into();
    }
    let Some(mcf) = Module::main_conf(cycle) else {
        return ngx::core::Status::NGX_OK.into();
    };
    if mcf.apps.is_empty() && !mcf.status_used {
        return ngx::core::Status::NGX_OK.into();
    }
    log::set_loop_thread();
    // SAFETY: init_process runs on the worker's event loop thread.
    unsafe { recycle::start(cycle, mcf) };
    if mcf.apps.is_empty() {
        // The module is loaded but no location names an application: no interpreter.
        return ngx::core::Status::NGX_OK.into();
    }
    // The bridge also carries log lines of threads an application starts in inline mode.
    // SAFETY: init_process runs once, on the worker's event loop thread.
    let bridged = unsafe { bridge::start(cycle as *const ngx_cycle_t as *mut ngx_cycle_t) };
    // SAFETY: the cycle log outlives the worker.
    let cycle_log = unsafe { log::Log::from_ptr(cycle.log) };
    if let Err(e) = &bridged {
        cycle_log.write_direct(
            ngx::ffi::NGX_LOG_ALERT,
            &format!("wsgi: wake-up channel not started: {e}"),
        );
    }
    interp::start_worker(mcf, cycle_log);
    if mcf.threads() > 0 && interp::worker().is_some() {
        pool::mark_threaded();
        let started = bridged
            .and_then(|()| pool::start(mcf.threads(), mcf.queue()).map_err(|e| e.to_string()));
        if let Err(e) = started {
            cycle_log.write_direct(
                ngx::ffi::NGX_LOG_ALERT,
                &format!("wsgi: python threads not started: {e}"),
            );
        }
    }
    recycle::update_rss();
    ngx::core::Status::NGX_OK.into()
}

/// Stops the Python threads and the worker's interpreter (atexit handlers run) when the
/// worker exits. Threads still stuck in an application after the grace period keep the
/// interpreter from being finalized (finalizing under them would crash the worker).
extern "C" fn exit_process(cycle: *mut ngx_cycle_t) {
    recycle::stop();
    let stopped = pool::stop(std::time::Duration::from_secs(5));
    bridge::stop();
    if stopped {
        // SAFETY: nginx passes the live cycle of this worker.
        if let Some(mcf) = Module::main_conf(unsafe { &*cycle }) {
            interp::run_stop_hook(mcf);
        }
        interp::stop_worker();
    } else {
        log::Log::cycle().write_direct(
            ngx::ffi::NGX_LOG_WARN,
            "wsgi: python threads still busy at exit, interpreter not finalized",
        );
    }
}

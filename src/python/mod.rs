//! The Python side of the thread boundary: everything that runs on a Python thread (or, in
//! inline mode, on the loop, with no nginx structure in reach). Safe code only, but for
//! `interp.rs`, the interpreter's own FFI edge. Nothing here imports `ngx`, `nginx/` or
//! `bridge/`: the bridge registers the wake-up (`exchange::set_waker`) and log forwarding.

pub mod environ;
pub mod exchange;
pub mod file_wrapper;
pub mod input;
pub mod interp;
pub mod parts;
pub mod pool;
pub mod response;
pub mod wsgi;

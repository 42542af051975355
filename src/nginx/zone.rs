//! The shared memory zone behind `wsgi_status`: one board of per-worker slots (`stats.rs`),
//! created at configuration time and kept across reloads.

use core::ffi::c_void;
use core::ptr::NonNull;

use ngx::ffi::{
    ngx_conf_t, ngx_int_t, ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_calloc, ngx_slab_pool_t,
    NGX_OK,
};

use crate::stats;

/// Room for the board and the slab allocator's own bookkeeping.
const ZONE_SIZE: usize = 256 * 1024;

/// Creates the status zone (called once the http block is parsed).
///
/// # Safety
/// `cf` is the configuration being parsed.
pub unsafe fn add(cf: *mut ngx_conf_t) -> Option<NonNull<ngx_shm_zone_t>> {
    let mut name = ngx::ngx_string!("ngx_http_wsgi_status");
    let size = ZONE_SIZE.max((stats::BOARD_SIZE * 2 + 4095) & !4095);
    let tag = <crate::Module as ngx::http::HttpModule>::module() as *const _ as *mut c_void;
    // SAFETY: registering a zone during configuration; nginx maps it before workers start.
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, size, tag) };
    if zone.is_null() {
        return None;
    }
    // SAFETY: the zone entry nginx just returned.
    unsafe {
        (*zone).init = Some(init_zone);
    }
    NonNull::new(zone)
}

/// Zone init: a new zone gets a board from its slab pool; a zone kept across a reload
/// (`data` is the old zone's board) keeps its board, and so its counts.
extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, data: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx mapped the zone and set up its slab pool at `shm.addr`.
    unsafe {
        if !data.is_null() {
            (*zone).data = data;
            return NGX_OK as ngx_int_t;
        }
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        let board = ngx_slab_calloc(pool, stats::BOARD_SIZE) as *mut u8;
        if board.is_null() {
            return ngx::ffi::NGX_ERROR as ngx_int_t;
        }
        stats::init_board(board);
        (*pool).data = board as *mut c_void;
        (*zone).data = board as *mut c_void;
    }
    NGX_OK as ngx_int_t
}

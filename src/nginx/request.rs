//! Copies what the WSGI application needs out of `ngx_http_request_t`.
//!
//! This is where the request is read: all `unsafe` reads of nginx's request structures
//! happen here, on the event loop, and produce a `RequestParts` that owns its data. Nothing
//! downstream (environ, input, the application) holds a pointer into nginx, so the
//! application can run on another thread and outlive nothing of nginx's.

use std::fs::File;
use std::os::fd::FromRawFd;

use ngx::ffi::{
    ngx_connection_local_sockaddr, ngx_http_request_t, ngx_inet_get_port, ngx_list_part_t,
    ngx_str_t, ngx_table_elt_t,
};
use ngx::http::{HttpModuleLocationConf, HttpModuleServerConf, NgxHttpCoreModule};

use crate::conf::LocConf;
use crate::python::input::BodySegment;
use crate::python::parts::RequestParts;
use crate::Module;

fn bytes_of(s: &ngx_str_t) -> Vec<u8> {
    if s.len == 0 || s.data.is_null() {
        return Vec::new();
    }
    // SAFETY: a non-empty `ngx_str_t` points at `len` readable bytes.
    unsafe { core::slice::from_raw_parts(s.data, s.len) }.to_vec()
}

/// Reads the request. Call on the event loop, after the request body has been read.
///
/// # Safety
/// `r` must be a live request of this worker whose body (if any) has been read by
/// `ngx_http_read_client_request_body`.
pub unsafe fn capture(r: *mut ngx_http_request_t) -> RequestParts {
    // SAFETY: the caller guarantees `r` is live; we only read from it, on its own thread.
    let r = unsafe { &mut *r };
    // SAFETY: a live request's connection outlives it.
    let c = unsafe { &mut *r.connection };
    let mut parts = RequestParts {
        method: bytes_of(&r.method_name),
        uri: bytes_of(&r.uri),
        args: bytes_of(&r.args),
        request_uri: bytes_of(&r.unparsed_uri),
        protocol: bytes_of(&r.http_protocol),
        remote_addr: bytes_of(&c.addr_text),
        ..Default::default()
    };
    if parts.protocol.is_empty() {
        // HTTP/0.9 requests carry no protocol; PEP 3333 still wants a value.
        parts.protocol = b"HTTP/0.9".to_vec();
    }

    // SAFETY: `sockaddr` is set for every accepted connection.
    parts.remote_port = unsafe { ngx_inet_get_port(c.sockaddr) } as u16;

    // Headers: walk the list parts of `headers_in.headers`.
    let mut part: *const ngx_list_part_t = &r.headers_in.headers.part;
    while !part.is_null() {
        // SAFETY: list parts hold `nelts` initialised `ngx_table_elt_t` entries.
        let p = unsafe { &*part };
        // SAFETY: as above.
        let elts =
            unsafe { core::slice::from_raw_parts(p.elts as *const ngx_table_elt_t, p.nelts) };
        for h in elts {
            if h.hash == 0 {
                // Entries nginx has deleted.
                continue;
            }
            if bytes_of(&h.key).eq_ignore_ascii_case(b"transfer-encoding") {
                // nginx has removed the transfer coding: the application gets the
                // decoded body and its length in CONTENT_LENGTH, nothing that describes
                // the framing nginx consumed.
                continue;
            }
            parts.headers.push((bytes_of(&h.key), bytes_of(&h.value)));
        }
        part = p.next;
    }

    // The local address: SERVER_PORT (and below, SERVER_NAME's last fallback).
    // SAFETY: with no text buffer the call only fills `c->local_sockaddr` on first use.
    let rc = unsafe { ngx_connection_local_sockaddr(c, core::ptr::null_mut(), 0) };
    if rc == ngx::ffi::NGX_OK as isize {
        // SAFETY: `local_sockaddr` was just filled in.
        parts.server_port = unsafe { ngx_inet_get_port(c.local_sockaddr) } as u16;
    }

    // SERVER_NAME: the validated Host (without port), else the server's configured
    // name, else the local address.
    parts.server_name = bytes_of(&r.headers_in.server);
    if parts.server_name.is_empty() {
        if let Some(cscf) = NgxHttpCoreModule::server_conf(r) {
            parts.server_name = bytes_of(&cscf.server_name);
        }
    }
    if parts.server_name.is_empty() {
        let mut addr = [0u8; 128]; // NGX_SOCKADDR_STRLEN is a macro bindgen does not see
        let mut local = ngx_str_t {
            len: addr.len(),
            data: addr.as_mut_ptr(),
        };
        // SAFETY: `local` points at a buffer of the length it declares.
        if unsafe { ngx_connection_local_sockaddr(c, &mut local, 0) } != ngx::ffi::NGX_OK as isize {
            local.len = 0;
        }
        let mut s = bytes_of(&local);
        // "[::1]:8080" style texts are not produced with port = 0; IPv6 stays bare.
        if s.first() == Some(&b'[') {
            s.retain(|&b| b != b'[' && b != b']');
        }
        parts.server_name = s;
    }

    #[cfg(ngx_feature = "ssl")]
    {
        parts.https = !c.ssl.is_null();
    }

    parts.has_body = r.headers_in.content_length_n > 0 || r.headers_in.chunked() != 0;
    if !r.request_body.is_null() {
        // SAFETY: the body has been read; `bufs` is the chain nginx keeps for the request.
        let rb = unsafe { &*r.request_body };
        let mut cl = rb.bufs;
        while !cl.is_null() {
            // SAFETY: the links of `bufs` and their buffers are live with the request.
            let link = unsafe { &*cl };
            // SAFETY: as above.
            let b = unsafe { &*link.buf };
            if b.in_file() != 0 && !b.file.is_null() {
                let len = (b.file_last - b.file_pos) as u64;
                if len > 0 {
                    // SAFETY: the temp file is open for the life of the request; we take
                    // our own descriptor so the body can be read after nginx closes it.
                    let fd = unsafe { libc::dup((*b.file).fd) };
                    if fd >= 0 {
                        // SAFETY: `fd` is a fresh descriptor that only this `File` owns.
                        let file = unsafe { File::from_raw_fd(fd) };
                        parts.body.push(BodySegment::File {
                            file,
                            offset: b.file_pos as u64,
                            len,
                        });
                        parts.body_len += len;
                    }
                }
            } else if !b.pos.is_null() && b.last > b.pos {
                // SAFETY: `pos..last` is the unread part of a memory buffer (`last > pos`).
                let len = unsafe { b.last.offset_from(b.pos) } as usize;
                // SAFETY: as above.
                let data = unsafe { core::slice::from_raw_parts(b.pos, len) };
                parts.body.push(BodySegment::Memory(data.to_vec()));
                parts.body_len += len as u64;
            }
            cl = link.next;
        }
    }

    if let Some(lcf) = Module::location_conf(r) {
        let lcf: &LocConf = lcf;
        parts.script_name = lcf.script_name.clone();
        parts.max_header_size = lcf.max_header_size();
        for p in lcf.params.iter().flatten() {
            let mut value = ngx_str_t {
                len: 0,
                data: core::ptr::null_mut(),
            };
            // SAFETY: a complex value compiled at configuration time, evaluated for the live
            // request on its loop thread; the result lives in the request pool.
            if unsafe { ngx::ffi::ngx_http_complex_value(r, p.value, &mut value) }
                != ngx::ffi::NGX_OK as isize
            {
                continue;
            }
            if p.if_not_empty && value.len == 0 {
                continue;
            }
            parts.params.push((p.name.clone(), bytes_of(&value)));
        }
    } else {
        parts.max_header_size = crate::conf::DEFAULT_MAX_HEADER_SIZE;
    }
    parts
}

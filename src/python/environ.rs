#![forbid(unsafe_code)]
//! The WSGI environ, built from `RequestParts` (safe code only).
//!
//! PEP 3333 "native strings": every CGI value is a `str` whose code points are the request's
//! bytes (latin-1 decoding), so nothing is lost and frameworks can re-encode. The constant
//! part (`wsgi.version`, `wsgi.multithread`, `SERVER_SOFTWARE`, ...) is built once per worker
//! and copied for each request, as NGINX Unit does.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use pyo3::{intern, Bound};

use crate::python::parts::RequestParts;

/// Decodes bytes as latin-1 into a Python `str` (ASCII is the fast common case).
pub fn native_str<'py>(py: Python<'py>, b: &[u8]) -> Bound<'py, PyString> {
    match std::str::from_utf8(b) {
        Ok(s) if s.is_ascii() => PyString::new(py, s),
        _ => {
            let s: String = b.iter().map(|&c| char::from(c)).collect();
            PyString::new(py, &s)
        }
    }
}

/// `Accept-Encoding` -> `HTTP_ACCEPT_ENCODING`.
pub fn cgi_header_name(name: &[u8]) -> String {
    let mut key = String::with_capacity(5 + name.len());
    key.push_str("HTTP_");
    for &b in name {
        key.push(if b == b'-' {
            '_'
        } else {
            char::from(b.to_ascii_uppercase())
        });
    }
    key
}

/// Request headers as CGI variables: repeats joined with ", " (Cookie with "; "), and
/// Content-Type / Content-Length under their CGI names (never as HTTP_*). Names with an
/// underscore (nginx passes them with `underscores_in_headers on`) are dropped, as gunicorn
/// does: `X_A` would become the same `HTTP_X_A` as `X-A`, so a client could forge a header
/// that a proxy in front of nginx set.
pub fn cgi_headers(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if name.contains(&b'_') {
            continue;
        }
        let key = if name.eq_ignore_ascii_case(b"content-type") {
            "CONTENT_TYPE".to_string()
        } else if name.eq_ignore_ascii_case(b"content-length") {
            "CONTENT_LENGTH".to_string()
        } else {
            cgi_header_name(name)
        };
        if let Some((_, existing)) = out.iter_mut().find(|(k, _)| *k == key) {
            let sep: &[u8] = if key == "HTTP_COOKIE" { b"; " } else { b", " };
            existing.extend_from_slice(sep);
            existing.extend_from_slice(value);
        } else {
            out.push((key, value.clone()));
        }
    }
    out
}

/// Splits the decoded URI into SCRIPT_NAME and PATH_INFO for a mount point.
pub fn split_script_name<'a>(uri: &'a [u8], script_name: Option<&'a str>) -> (&'a [u8], &'a [u8]) {
    match script_name {
        Some(sn) if !sn.is_empty() => {
            let sn = sn.as_bytes();
            if uri.starts_with(sn) && (uri.len() == sn.len() || uri[sn.len()] == b'/') {
                (sn, &uri[sn.len()..])
            } else {
                // The location matched a URI outside the mount point (`/shopping` under
                // `/shop`): no mount, so that SCRIPT_NAME + PATH_INFO is still the path.
                (b"", uri)
            }
        }
        _ => (b"", uri),
    }
}

/// `nginx/1.22.1 ngx-wsgi/0.1.0`.
pub fn server_software() -> String {
    format!(
        "{} ngx-wsgi/{}",
        env!("NGX_WSGI_NGINX_VERSION"),
        env!("CARGO_PKG_VERSION")
    )
}

thread_local! {
    /// `HTTP_*` keys already made as Python strings on this thread: the same few dozen
    /// header names come with every request.
    static HEADER_KEYS: std::cell::RefCell<std::collections::HashMap<String, Py<PyString>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Most distinct header names kept per thread (a client inventing names cannot grow it).
const HEADER_KEYS_MAX: usize = 512;

fn header_key<'py>(py: Python<'py>, key: &str) -> Bound<'py, PyString> {
    HEADER_KEYS.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(k) = cache.get(key) {
            return k.bind(py).clone();
        }
        let k = PyString::intern(py, key);
        if cache.len() < HEADER_KEYS_MAX {
            cache.insert(key.to_string(), k.clone().unbind());
        }
        k
    })
}

/// The per-worker constant part of every environ.
pub fn base_environ<'py>(
    py: Python<'py>,
    multithread: bool,
    multiprocess: bool,
    file_wrapper: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("wsgi.version", (1, 0))?;
    d.set_item("wsgi.multithread", multithread)?;
    d.set_item("wsgi.multiprocess", multiprocess)?;
    d.set_item("wsgi.run_once", false)?;
    d.set_item("wsgi.input_terminated", true)?;
    d.set_item("wsgi.file_wrapper", file_wrapper)?;
    d.set_item("SERVER_SOFTWARE", server_software())?;
    d.set_item("GATEWAY_INTERFACE", "CGI/1.1")?;
    Ok(d)
}

/// Builds the environ of one request: a copy of `base` plus the request's values.
/// `input` and `errors` are the request's `wsgi.input` and `wsgi.errors` objects.
pub fn build<'py>(
    py: Python<'py>,
    base: &Bound<'py, PyDict>,
    parts: &RequestParts,
    input: Bound<'py, PyAny>,
    errors: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyDict>> {
    let env = base.copy()?;
    let (script_name, path_info) = split_script_name(&parts.uri, parts.script_name.as_deref());
    env.set_item(intern!(py, "REQUEST_METHOD"), native_str(py, &parts.method))?;
    env.set_item(intern!(py, "SCRIPT_NAME"), native_str(py, script_name))?;
    env.set_item(intern!(py, "PATH_INFO"), native_str(py, path_info))?;
    env.set_item(intern!(py, "QUERY_STRING"), native_str(py, &parts.args))?;
    env.set_item(
        intern!(py, "REQUEST_URI"),
        native_str(py, &parts.request_uri),
    )?;
    env.set_item(
        intern!(py, "SERVER_PROTOCOL"),
        native_str(py, &parts.protocol),
    )?;
    env.set_item(
        intern!(py, "SERVER_NAME"),
        native_str(py, &parts.server_name),
    )?;
    env.set_item(intern!(py, "SERVER_PORT"), parts.server_port.to_string())?;
    env.set_item(
        intern!(py, "REMOTE_ADDR"),
        native_str(py, &parts.remote_addr),
    )?;
    env.set_item(intern!(py, "REMOTE_PORT"), parts.remote_port.to_string())?;
    if parts.https {
        env.set_item(intern!(py, "HTTPS"), intern!(py, "on"))?;
        env.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "https"))?;
    } else {
        env.set_item(intern!(py, "wsgi.url_scheme"), intern!(py, "http"))?;
    }
    for (key, value) in cgi_headers(&parts.headers) {
        env.set_item(header_key(py, &key), native_str(py, &value))?;
    }
    if parts.has_body || parts.body_len > 0 {
        // The length of the body as read: right for chunked requests too, which arrive
        // without a Content-Length.
        env.set_item(intern!(py, "CONTENT_LENGTH"), parts.body_len.to_string())?;
    }
    // `wsgi_param`s come last: they override the module's own keys (REMOTE_ADDR, HTTPS,
    // SERVER_NAME, HTTP_*...); HTTPS=on (or 1) also makes the URL scheme https.
    for (name, value) in &parts.params {
        env.set_item(name.as_str(), native_str(py, value))?;
        if name == "HTTPS" {
            let on = value.eq_ignore_ascii_case(b"on") || value == b"1";
            let scheme = if on {
                intern!(py, "https")
            } else {
                intern!(py, "http")
            };
            env.set_item(intern!(py, "wsgi.url_scheme"), scheme)?;
        }
    }
    env.set_item(intern!(py, "nginx.log_vars"), PyDict::new(py))?;
    env.set_item(intern!(py, "wsgi.input"), input)?;
    env.set_item(intern!(py, "wsgi.errors"), errors)?;
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names() {
        assert_eq!(cgi_header_name(b"Accept-Encoding"), "HTTP_ACCEPT_ENCODING");
        assert_eq!(cgi_header_name(b"x-forwarded-for"), "HTTP_X_FORWARDED_FOR");
    }

    #[test]
    fn repeats_are_joined() {
        let h = vec![
            (b"Accept".to_vec(), b"a".to_vec()),
            (b"Cookie".to_vec(), b"a=1".to_vec()),
            (b"accept".to_vec(), b"b".to_vec()),
            (b"cookie".to_vec(), b"b=2".to_vec()),
            (b"Content-Type".to_vec(), b"text/plain".to_vec()),
        ];
        let out = cgi_headers(&h);
        assert_eq!(out[0], ("HTTP_ACCEPT".to_string(), b"a, b".to_vec()));
        assert_eq!(out[1], ("HTTP_COOKIE".to_string(), b"a=1; b=2".to_vec()));
        assert_eq!(out[2], ("CONTENT_TYPE".to_string(), b"text/plain".to_vec()));
    }

    #[test]
    fn underscore_names_are_dropped() {
        let h = vec![
            (b"X-A".to_vec(), b"good".to_vec()),
            (b"X_A".to_vec(), b"evil".to_vec()),
        ];
        assert_eq!(
            cgi_headers(&h),
            vec![("HTTP_X_A".to_string(), b"good".to_vec())]
        );
    }

    #[test]
    fn mount_points() {
        assert_eq!(
            split_script_name(b"/shop/cart", Some("/shop")),
            (&b"/shop"[..], &b"/cart"[..])
        );
        assert_eq!(
            split_script_name(b"/shop", Some("/shop")),
            (&b"/shop"[..], &b""[..])
        );
        assert_eq!(
            split_script_name(b"/shopping", Some("/shop")),
            (&b""[..], &b"/shopping"[..])
        );
        assert_eq!(split_script_name(b"/x", None), (&b""[..], &b"/x"[..]));
        assert_eq!(split_script_name(b"/x", Some("")), (&b""[..], &b"/x"[..]));
    }
}

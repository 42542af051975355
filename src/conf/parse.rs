//! Pure parsers of directive values (safe, unit-tested). Times and sizes are not here:
//! the directives use nginx's own `ngx_parse_time` / `ngx_parse_size`, so that they mean
//! what they mean in every other directive.

use std::path::Path;

use super::{AppSource, AppSpec};

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
        Some(_) => {
            return Err(format!(
                "invalid application \"{value}\": a factory call must end with \")\""
            ))
        }
        None => (value, None),
    };
    let (target, callable) = match head.rsplit_once(':') {
        Some((t, c)) if is_dotted_name(c) => (t, c.to_string()),
        Some((_, c)) if !head.contains('/') || factory_args.is_some() => {
            return Err(format!("invalid callable name \"{c}\""));
        }
        _ if factory_args.is_some() => {
            return Err(format!(
                "invalid application \"{value}\": a factory needs MODULE:NAME(...)"
            ))
        }
        _ => (head, "application".to_string()),
    };
    if target.contains('/') || target.ends_with(".py") {
        let path = Path::new(target);
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            prefix.join(path)
        };
        return Ok(AppSpec {
            source: AppSource::Script(path),
            callable,
            factory_args,
        });
    }
    if !is_dotted_name(target) {
        return Err(format!("invalid module name \"{target}\""));
    }
    Ok(AppSpec {
        source: AppSource::Module(target.to_string()),
        callable,
        factory_args,
    })
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
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
                {
                    i += 1;
                }
                let num = text[start..i].replace('_', "");
                let digits = num.trim_start_matches(['+', '-']);
                let hex = digits
                    .strip_prefix("0x")
                    .or_else(|| digits.strip_prefix("0X"));
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
                    return Err(bad(
                        "only literals (strings, numbers, True, False, None) may be passed",
                    ));
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
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if matches!(key.trim(), "version" | "version_info") {
            let mut parts = value.trim().split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            return Some((major, minor));
        }
    }
    None
}

/// Refuses a virtualenv made from another Python than the one this module embeds: its
/// packages (and C extensions) are for that Python, and would fail in confusing ways.
pub fn check_venv_version(home: &Path, embedded: (u32, u32)) -> Result<(), String> {
    let Ok(cfg) = std::fs::read_to_string(home.join("pyvenv.cfg")) else {
        return Ok(());
    };
    let Some((major, minor)) = venv_python_version(&cfg) else {
        return Ok(());
    };
    let (emajor, eminor) = embedded;
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

/// Checks a `wsgi_param` name: a CGI-style key (letters, digits, `_`, `-`, `.`), never one
/// of the `wsgi.*` keys the module owns.
pub fn parse_param_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(format!("\"{name}\""));
    }
    if name.starts_with("wsgi.") {
        return Err(format!("\"{name}\": the wsgi.* keys belong to the module"));
    }
    Ok(())
}

/// Parses `module:callable` for the worker hooks.
pub fn parse_hook(value: &str) -> Result<(String, String), String> {
    match value.split_once(':') {
        Some((m, c)) if is_dotted_name(m) && is_dotted_name(c) => {
            Ok((m.to_string(), c.to_string()))
        }
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
        let s = parse_app_spec(
            "pkg.app:create_app(\"prod:a/b\", 2, debug=False, x=-1.5e3)",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(
            s.factory_args.as_deref(),
            Some("(\"prod:a/b\", 2, debug=False, x=-1.5e3)")
        );
        let s = parse_app_spec("/srv/app.py:make('x',)", Path::new("/")).unwrap();
        assert_eq!(s.source, AppSource::Script("/srv/app.py".into()));
        for bad in [
            "pkg:f(",
            "pkg:f(x)",
            "pkg:f(os.system('x'))",
            "pkg:f(a=1, 2)",
            "pkg:f('x') y",
            "pkg(1)",
            "pkg:f('x)",
        ] {
            assert!(parse_app_spec(bad, Path::new("/")).is_err(), "{bad}");
        }
    }

    #[test]
    fn venv_versions() {
        assert_eq!(
            venv_python_version("home = /usr/bin\nversion = 3.12.1\n"),
            Some((3, 12))
        );
        assert_eq!(
            venv_python_version("version_info = 3.13.0.final.0\n"),
            Some((3, 13))
        );
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
    fn param_names() {
        assert!(parse_param_name("REMOTE_USER").is_ok());
        assert!(parse_param_name("SSL_CLIENT_S_DN").is_ok());
        assert!(parse_param_name("wsgi.input").is_err());
        assert!(parse_param_name("A B").is_err());
        assert!(parse_param_name("").is_err());
    }

    #[test]
    fn hooks() {
        assert_eq!(
            parse_hook("app.hooks:start"),
            Ok(("app.hooks".into(), "start".into()))
        );
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

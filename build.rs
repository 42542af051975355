//! Build script: turns what `nginx-sys` learned about the nginx tree we build against into
//! `cfg` flags (features, OS, version gates), and records the Python we link for the module.
//!
//! `nginx-sys` must be a direct dependency for its `DEP_NGINX_*` variables to reach us.

fn main() {
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES_CHECK");
    println!(
        "cargo::rustc-check-cfg=cfg(ngx_feature, values({}))",
        std::env::var("DEP_NGINX_FEATURES_CHECK").unwrap_or_else(|_| "any()".to_string())
    );
    println!("cargo::rerun-if-env-changed=DEP_NGINX_FEATURES");
    if let Ok(features) = std::env::var("DEP_NGINX_FEATURES") {
        for feature in features.split(',').map(str::trim) {
            println!("cargo::rustc-cfg=ngx_feature=\"{feature}\"");
        }
    }

    // Layout differences between the nginx versions we support (Debian's 1.22 and the
    // vendored 1.28): `ngx_table_elt_t.next` appeared in 1.23.0.
    const VERSION_CHECKS: &[(u64, &str)] = &[(1_023_000, "nginx1_23_0")];
    for (_, name) in VERSION_CHECKS {
        println!("cargo::rustc-check-cfg=cfg({name})");
    }
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION_NUMBER");
    if let Ok(version) = std::env::var("DEP_NGINX_VERSION_NUMBER") {
        let version: u64 = version.parse().unwrap_or(0);
        for (min, name) in VERSION_CHECKS {
            if version >= *min {
                println!("cargo::rustc-cfg={name}");
            }
        }
    }
    println!("cargo::rerun-if-env-changed=DEP_NGINX_VERSION");
    let nginx = std::env::var("DEP_NGINX_VERSION").unwrap_or_else(|_| "nginx".to_string());
    println!("cargo::rustc-env=NGX_WSGI_NGINX_VERSION={nginx}");
    println!("cargo::rerun-if-env-changed=PYO3_PYTHON");
}

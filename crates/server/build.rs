//! Embed the Python driver package (`runtime/python/pyxis_runtime/*.py`) and
//! the requirements into the binary, so one executable carries its runtime;
//! and the playground page built in `web/dist`, when it is there.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let pkg = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../runtime/python/pyxis_runtime");
    println!("cargo:rerun-if-changed={}", pkg.display());
    let mut names: Vec<String> = std::fs::read_dir(&pkg)
        .expect("runtime/python/pyxis_runtime exists")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".py"))
        .collect();
    names.sort();
    let mut out = String::from("/// The driver package, as (file name, contents).\npub const DRIVER_FILES: &[(&str, &str)] = &[\n");
    for n in &names {
        let path = pkg.join(n);
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            out,
            "    ({n:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("write to a String");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("driver_files.rs");
    std::fs::write(dest, out).expect("write driver_files.rs");
    embed_page();
}

/// Write `page_files.rs`: `PAGE_FILES`, every file of `web/dist` as
/// (path relative to it, bytes). Without `web/dist` (the page not built) the
/// list is empty and the binary still builds; `web/` is watched then, so
/// building the page later rebuilds the server.
fn embed_page() {
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web");
    let dist = web.join("dist");
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        println!("cargo:rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
    } else {
        println!("cargo:rerun-if-changed={}", web.display());
    }
    files.sort();
    let mut out = String::from(
        "/// The built page, as (path relative to web/dist, contents).\n\
         const PAGE_FILES: &[(&str, &[u8])] = &[\n",
    );
    for (rel, path) in &files {
        writeln!(out, "    ({rel:?}, include_bytes!({path:?})),").expect("write to a String");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("page_files.rs");
    std::fs::write(dest, out).expect("write page_files.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            collect(root, &path, files);
        } else if kind.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // The build stamp is the front-end build's, not the page's.
            if name.starts_with('.') {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under web/dist")
                .to_string_lossy()
                .into_owned();
            files.push((rel, path.display().to_string()));
        }
    }
}

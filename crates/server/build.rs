//! Embed the Python driver package (`runtime/python/pyxis_runtime/*.py`) and
//! the requirements into the binary, so one executable carries its runtime.

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
}

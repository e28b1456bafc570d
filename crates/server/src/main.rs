//! `pyxis`: the code interpreter server (see the library, `pyxis_server`).

fn main() -> anyhow::Result<()> {
    pyxis_server::cli::main()
}

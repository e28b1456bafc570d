//! The sandbox's init: pid 1 of each sandbox, started by `pyxis_sandbox::spawn` with a
//! Unix socket to the zygote as its stdin. See `pyxis_sandbox::init_main`.

fn main() {
    pyxis_sandbox::init_main()
}

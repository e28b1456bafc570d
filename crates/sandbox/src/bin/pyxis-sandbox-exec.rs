//! Starts one process inside an existing sandbox (its namespaces, cgroups, uid, seccomp),
//! as the server asks on the descriptors described at `pyxis_sandbox::ExecSpec`. See
//! `pyxis_sandbox::exec_main`.

fn main() {
    pyxis_sandbox::exec_main()
}

//! `tarmac-sandbox`: the sandbox helper alone. `tarmac serve` and `tarmac agent` start each
//! deployment process through it when it sits beside them (see `tarmac::sandbox`); without it
//! they start them through themselves. Being small, it maps and starts in a fraction of the
//! server's time, and a run starts several processes.
#![forbid(unsafe_code)]

fn main() {
    tarmac::sandbox::trampoline();
    eprintln!(
        "tarmac-sandbox is started by tarmac for each deployment process; it takes no commands of its own"
    );
    #[allow(clippy::exit, reason = "a usage error, before anything started")]
    std::process::exit(2)
}

//! `include_dir!` embeds the web console (`console/`) at compile time, but cargo does not know
//! about those files: this rebuilds the crate when one of them changes.
fn main() {
    println!("cargo:rerun-if-changed=console");
}

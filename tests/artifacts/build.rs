//! Builds every guest under `guests/` for `wasm32-wasip2` and writes a
//! module of path constants, one per component (as wasmtime's
//! `crates/test-programs/artifacts` does). Guest binaries are never checked in.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let guests = manifest_dir.join("../../guests").canonicalize().unwrap();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    // A target directory of its own: the outer cargo holds the lock on ours.
    let target_dir = out_dir.join("guests-target");

    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests.join("Cargo.lock").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../../wit").display()
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the guests");
    assert!(
        status.success(),
        "building guests failed; is the target installed? run `rustup target add wasm32-wasip2`"
    );

    let wasm_dir = target_dir.join("wasm32-wasip2/release");
    let mut generated = String::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&guests).unwrap() {
        let entry = entry.unwrap();
        let src = entry.path().join("src");
        if !entry.path().join("Cargo.toml").exists() || !src.join("lib.rs").exists() {
            continue;
        }
        watch(&src);
        watch(&entry.path().join("Cargo.toml"));
        let name = entry.file_name().to_string_lossy().to_string();
        let wasm = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        if !wasm.exists() {
            continue; // a library crate such as `common`
        }
        let constant = name.to_uppercase().replace('-', "_");
        generated.push_str(&format!(
            "/// Path of the `{name}` guest component.\npub const {constant}: &str = {:?};\n",
            wasm.display().to_string()
        ));
        names.push(name);
    }
    names.sort();
    generated.push_str(&format!(
        "/// Every guest component: (name, path).\npub const ALL: &[(&str, &str)] = &[{}];\n",
        names
            .iter()
            .map(|n| format!("({n:?}, {})", n.to_uppercase().replace('-', "_")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    std::fs::write(out_dir.join("guests.rs"), generated).unwrap();
}

fn watch(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

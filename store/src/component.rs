//! Checks on uploaded component bytes, before they are compiled or stored,
//! so the common mistakes get a reason a person can act on.

/// `Ok` if `bytes` look like a component binary; else why not.
pub fn check_component_bytes(bytes: &[u8]) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("the body is empty; send the component bytes (application/wasm)".into());
    }
    if !bytes.starts_with(b"\0asm") {
        return Err("not a WebAssembly binary (it does not start with the \\0asm magic)".into());
    }
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err("this is a core WebAssembly module, not a component; build with `--target wasm32-wasip2`, or wrap it with `wasm-tools component new`".into());
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err("unsupported WebAssembly binary version or layer".into());
    }
    Ok(())
}

/// Fully validates a component as the compiler will (`wasmparser`, with the
/// features wasmtime enables by default); `Err` carries the reason.
pub fn validate_component(bytes: &[u8]) -> Result<(), String> {
    check_component_bytes(bytes)?;
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::default())
        .validate_all(bytes)
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_modules_and_garbage_are_refused_with_reasons() {
        let reason = check_component_bytes(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(reason.contains("core WebAssembly module"), "{reason}");
        let reason = check_component_bytes(b"hello").unwrap_err();
        assert!(reason.contains("\\0asm"), "{reason}");
        let reason = check_component_bytes(b"").unwrap_err();
        assert!(reason.contains("empty"), "{reason}");
        check_component_bytes(b"\0asm\x0d\0\x01\0").unwrap();
        assert!(
            validate_component(b"\0asm\x0d\0\x01\0").is_ok(),
            "the empty component is valid"
        );
        assert!(
            validate_component(b"\0asm\x0d\0\x01\0\x07\x05").is_err(),
            "a truncated section is not"
        );
    }
}

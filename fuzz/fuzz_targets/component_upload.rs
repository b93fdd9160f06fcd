//! Component upload validation: arbitrary bytes must give `Ok` or a reason,
//! never a panic; the quick check never accepts what full validation calls
//! a core module.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let quick = sluice_store::check_component_bytes(input);
    let full = sluice_store::validate_component(input);
    if quick.is_err() {
        assert!(full.is_err(), "full validation accepted what the quick check refused");
    }
});

//! Trigger and filter JSON: parsing must never panic, and a trigger that
//! parses must round-trip through its JSON form unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_router::trigger::Trigger;

fuzz_target!(|input: &[u8]| {
    if sluice_router::event::check_depth(input).is_err() {
        return;
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) else { return };
    let Ok(trigger) = Trigger::parse(&value, None) else { return };
    let again = Trigger::parse(&trigger.to_json(), None).expect("our own JSON parses");
    assert_eq!(again, trigger);
});

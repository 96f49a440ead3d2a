//! Arbitrary bytes, split into a record's key, headers and value, through the command processor's command decoder.
#![no_main]

mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    common::command_decode(data);
});

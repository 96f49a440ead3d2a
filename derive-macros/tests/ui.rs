//! Compile-time UI tests of the derive macros: `pass/` must compile and run,
//! `fail/` must fail with exactly the checked-in `.stderr`.
//!
//! Regenerate the `.stderr` files with `TRYBUILD=overwrite cargo test -p tributary-derive`
//! and review every diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}

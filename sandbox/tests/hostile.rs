//! Hostile modules against the sandbox itself: each fails with its fixed
//! fault, and the same sandbox keeps serving well-behaved modules.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]

mod fixtures;

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array};
use kexin_sandbox::{Fault, Limits, Sandbox};

fn input() -> Vec<ArrayRef> {
    vec![Arc::new(Float64Array::from(vec![
        Some(1.5),
        None,
        Some(-4.0),
    ]))]
}

fn sandbox() -> Sandbox {
    Sandbox::new(Limits::default()).unwrap()
}

/// A well-behaved call on the same sandbox: proves it still serves.
fn still_serves(sb: &Sandbox) {
    let m = sb.load(&fixtures::doubler()).unwrap();
    let s = m.session(sb.limits().call);
    let out = s.call_scalar("evil", &input(), 3).unwrap();
    let out = out.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(out.value(0), 3.0);
    assert!(out.is_null(1));
    assert_eq!(out.value(2), -8.0);
}

#[test]
fn runtime_faults_are_classified_and_the_sandbox_keeps_serving() {
    let sb = sandbox();
    let expected = [
        ("infinite_loop", Fault::Fuel),
        ("memory_bomb", Fault::Memory),
        ("unbounded_recursion", Fault::Stack),
        ("output_length_lie", Fault::Output),
        ("output_short", Fault::Output),
        ("unreachable", Fault::Trap),
        ("divide_by_zero", Fault::Trap),
        ("table_bomb", Fault::Memory),
        ("guest_error_status", Fault::Trap),
    ];
    let fixtures = fixtures::hostile();
    assert_eq!(fixtures.len(), expected.len());
    for ((name, bytes), (want_name, want)) in fixtures.iter().zip(expected) {
        assert_eq!(*name, want_name);
        let m = sb
            .load(bytes)
            .unwrap_or_else(|f| panic!("{name} refused at load: {f:?}"));
        let s = m.session(sb.limits().call);
        let got = s.call_scalar("evil", &input(), 3).unwrap_err();
        assert_eq!(got, want, "{name}");
        // A second call on the same session gets a fresh instance and the
        // same fault: nothing of the failed instance is reused.
        assert_eq!(
            s.call_scalar("evil", &input(), 3).unwrap_err(),
            want,
            "{name}"
        );
        still_serves(&sb);
    }
}

#[test]
fn bad_modules_are_refused_at_load() {
    let sb = sandbox();
    let expected = [
        ("wasi_import", Fault::Import),
        ("wrong_signature", Fault::Signature),
        ("malformed", Fault::Module),
        ("oversized", Fault::Module),
        ("no_manifest", Fault::Manifest),
    ];
    for ((name, bytes), (want_name, want)) in fixtures::refused_at_load().iter().zip(expected) {
        assert_eq!(*name, want_name);
        assert_eq!(sb.load(bytes).unwrap_err(), want, "{name}");
        still_serves(&sb);
    }
}

#[test]
fn epoch_deadline_stops_a_loop_that_fuel_would_allow() {
    // Practically unlimited fuel, 50 ms of time: the epoch ends the loop.
    let sb = Sandbox::new(
        Limits::builder()
            .fuel_per_call(u64::MAX / 4)
            .call_timeout(std::time::Duration::from_millis(50))
            .build()
            .unwrap(),
    )
    .unwrap();
    let (_, bytes) = &fixtures::hostile()[0];
    let m = sb.load(bytes).unwrap();
    let s = m.session(sb.limits().call);
    assert_eq!(s.call_scalar("evil", &input(), 3).unwrap_err(), Fault::Fuel);
}

#[test]
fn calls_are_checked_against_the_manifest() {
    let sb = sandbox();
    let m = sb.load(&fixtures::doubler()).unwrap();
    assert_eq!(m.manifest().functions[0].name, "evil");
    assert_eq!(
        m.digest(),
        kexin_sandbox::module_digest(&fixtures::doubler())
    );
    let s = m.session(sb.limits().call);
    // Unknown function, wrong arity, wrong Arrow type, wrong row count.
    assert_eq!(
        s.call_scalar("nope", &input(), 3).unwrap_err(),
        Fault::Signature
    );
    assert_eq!(s.call_scalar("evil", &[], 3).unwrap_err(), Fault::Signature);
    let ints: ArrayRef = Arc::new(arrow_array::Int32Array::from(vec![1, 2, 3]));
    assert_eq!(
        s.call_scalar("evil", &[ints], 3).unwrap_err(),
        Fault::Signature
    );
    assert_eq!(
        s.call_scalar("evil", &input(), 2).unwrap_err(),
        Fault::Signature
    );
    // Instances are reused within a session after successful calls.
    for _ in 0..5 {
        s.call_scalar("evil", &input(), 3).unwrap();
    }
    assert_eq!(s.instances_created(), 1);
}

#[test]
fn scene_limits_apply_per_session() {
    let sb = sandbox();
    let (_, bomb) = &fixtures::hostile()[1];
    let m = sb.load(bomb).unwrap();
    let mut tight = sb.limits().call;
    tight.memory_bytes = 1 << 20;
    assert_eq!(
        m.session(tight)
            .call_scalar("evil", &input(), 3)
            .unwrap_err(),
        Fault::Memory
    );
}

#[test]
fn a_trapping_start_function_is_the_module_fault() {
    // The start function runs at instantiation: its trap must be reported
    // as a trap (not as a busy node), at load and for every query.
    let evil = r#"(func (export "kx_evil") (param i32) (result i32) (i32.const 0))"#;
    let bytes = fixtures::module("(func $s unreachable) (start $s)", evil);
    assert_eq!(sandbox().load(&bytes).unwrap_err(), Fault::Trap);
    let looping = fixtures::module("(func $s (loop $l (br $l))) (start $s)", evil);
    assert_eq!(sandbox().load(&looping).unwrap_err(), Fault::Fuel);
}

#[test]
fn a_full_pool_is_busy_not_a_module_fault() {
    let sb = Sandbox::new(Limits::builder().instance_slots(2).build().unwrap()).unwrap();
    let m = sb.load(&fixtures::doubler()).unwrap();
    // Hold two instances (one per session), then a third session finds no
    // free slot.
    let a = m.session(sb.limits().call);
    let b = m.session(sb.limits().call);
    a.call_scalar("evil", &input(), 3).unwrap();
    b.call_scalar("evil", &input(), 3).unwrap();
    let c = m.session(sb.limits().call);
    assert_eq!(c.call_scalar("evil", &input(), 3).unwrap_err(), Fault::Busy);
    drop(a);
    assert!(c.call_scalar("evil", &input(), 3).is_ok());
}

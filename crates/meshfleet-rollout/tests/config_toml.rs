//! The config as a scenario file would carry it (TOML), defaults filled in.
#![allow(clippy::unwrap_used)]

use meshfleet_rollout::{
    AfterWave, Duration, RolloutConfig, StartMode, Target, Threshold, WaveSpec,
};

#[test]
fn a_scenario_style_toml_config_parses_with_defaults_for_the_rest() {
    let c: RolloutConfig = toml::from_str(
        r#"
        target = "1.1.0"
        previous = "1.0.0"
        seed = 42
        max_in_flight = 4
        start = "await_approval"

        [[waves]]
        until = { count = 3 }
        failure = { count = 1 }
        success = { percent = 100 }
        then = "pause_for_approval"

        [[waves]]
        until = { percent = 100 }

        [selector]
        hardware = ["ESP32"]
        exclude_tags = ["lab"]

        [health]
        # durations are integer microseconds, like the state they end up in
        window = 300000000
        max_heap_drop_percent = 15
        "#,
    )
    .unwrap();
    c.validate().unwrap();
    assert_eq!(c.seed, 42);
    assert_eq!(c.max_in_flight, 4);
    assert_eq!(c.start, StartMode::AwaitApproval);
    assert_eq!(
        c.waves,
        [
            WaveSpec {
                until: Target::Count(3),
                min_size: 1,
                success: Threshold::Percent(100),
                failure: Threshold::Count(1),
                then: AfterWave::PauseForApproval,
            },
            WaveSpec::up_to(100),
        ]
    );
    assert_eq!(c.health.window, Duration::from_mins(5));
    assert_eq!(c.health.max_heap_drop_percent, 15);
    // Untouched fields keep their documented defaults.
    assert_eq!(c.health.min_samples, 3);
    assert_eq!(c.timeouts.reboot, Duration::from_mins(10));
    assert_eq!(c.max_retries, 2);
    assert!(c.rollback_failed_nodes);
    assert_eq!(c.selector.hardware, ["ESP32"]);
}

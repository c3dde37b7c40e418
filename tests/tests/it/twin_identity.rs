//! A re-created device identity (deleted and added again, or provisioned to another hub)
//! starts its twin at `$version` 1 while the write state still holds the versions of the old
//! twin: the state is set aside and the new twin's desired values are written and
//! acknowledged, once (issue #15).

use std::time::Duration;

use serde_json::json;
use tests::*;

use crate::writes::{ack, hub_section, line_config, start, stats};

/// A simulator, a broker with the hub double, and the write state `journal` left in the
/// buffer directory; the state file's path.
struct Bench {
    dir: tempfile::TempDir,
    sim: Sim,
    _broker: Mosquitto,
    port: u16,
    hub: HubDouble,
    state: std::path::PathBuf,
}

async fn bench(journal: &str) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let sim = start_sim(dir.path(), |_| {}).await;
    let (broker, port) = plain_mosquitto(dir.path());
    let hub = HubDouble::start(port).await;
    let state = dir.path().join("buffer/writes/state.jsonl");
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::write(&state, journal).unwrap();
    Bench {
        dir,
        sim,
        _broker: broker,
        port,
        hub,
        state,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_twin_after_an_old_state_file_is_written_once_and_acknowledged() {
    // The state of an earlier twin: versions up to 50.
    let Bench {
        dir,
        sim,
        port,
        hub,
        _broker,
        ..
    } = bench("{\"twin\":\"fillerSpeedSetpoint\",\"v\":50}\n{\"twin\":\"recipe.name\",\"v\":48}\n")
        .await;
    // The new twin: one desired value, $version 1.
    let v = hub.desire_silently(json!({"fillerSpeedSetpoint": 640.0}));
    assert_eq!(v, 1);
    let config = line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &hub_section("TWIN_IDENTITY_HUB_CS", port),
    );
    let running = start(&config, &hub).await;
    let a = ack(&hub, "fillerSpeedSetpoint", 1, 200).await;
    assert_eq!(a["value"], json!(640.0), "{a}");
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").writes, 1);
    // The new twin's versions are followed from there: v2 of another property.
    let v2 = hub.desire(json!({"recipe": {"name": "Still 0.5 l"}})).await;
    ack(&hub, "recipe.name", v2, 200).await;
    running.stop().await;

    // A restart with the new state: nothing written again.
    let running = start(&config, &hub).await;
    let v3 = hub.desire(json!({"fillerSpeedSetpoint": 641.0})).await;
    ack(&hub, "fillerSpeedSetpoint", v3, 200).await;
    eventually("the write of v3", Duration::from_secs(10), || {
        let n = stats(&sim, "Filler.SpeedSetpoint").writes;
        async move { (n == 2).then_some(()) }
    })
    .await;
    assert_eq!(stats(&sim, "Filler.RecipeName").writes, 1, "v2 once");
    running.stop().await;
    assert_eq!(
        stats(&sim, "Filler.SpeedSetpoint").writes,
        2,
        "v1 and v3, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_of_another_hub_is_set_aside_even_when_the_versions_look_handled() {
    // Written for the same device on another hub, where fillerSpeedSetpoint reached v3.
    let Bench {
        dir,
        sim,
        port,
        hub,
        state,
        _broker,
    } = bench(
        "{\"identity\":\"otherhub.azure-devices.net/line-w-edge\"}\n{\"twin\":\"fillerSpeedSetpoint\",\"v\":3}\n",
    )
    .await;
    // This hub's twin: fillerSpeedSetpoint set at v2, the document at v5 (above the state's
    // 3: the version check alone would take v2 as handled).
    hub.desire_silently(json!({"recipe": {"name": "Still 0.5 l"}}));
    let v = hub.desire_silently(json!({"fillerSpeedSetpoint": 610.0}));
    assert_eq!(v, 2);
    let mut doc = v;
    for i in 0..3 {
        doc = hub.desire_silently(json!({"recipe": {"name": format!("Still {i}")}}));
    }
    assert_eq!(doc, 5);
    let config = line_config(
        dir.path(),
        sim.sim.endpoint_url(),
        &hub_section("TWIN_IDENTITY_HUB_CS_2", port),
    );
    let running = start(&config, &hub).await;
    // Acknowledged with the document's $version.
    ack(&hub, "fillerSpeedSetpoint", doc, 200).await;
    assert_eq!(stats(&sim, "Filler.SpeedSetpoint").writes, 1);
    running.stop().await;
    let journal = std::fs::read_to_string(&state).unwrap();
    assert!(
        journal.contains("\"identity\":\"testhub.azure-devices.net/line-w-edge\""),
        "{journal}"
    );
}

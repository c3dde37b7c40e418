//! The simulator seen from an OPC UA client over loopback.

mod harness;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::*;
use opcua::client::{DataChangeCallback, IdentityToken, SessionPollResult};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    CallMethodRequest, DataValue, MessageSecurityMode, MonitoredItemCreateRequest, NodeId,
    StatusCode, TimestampsToReturn, Variant,
};
use simulator::{FaultKind, ScaleSpec};

/// Values received per node, in arrival order.
type Received = Arc<Mutex<HashMap<NodeId, Vec<DataValue>>>>;

async fn subscribe(session: &opcua::client::Session, ids: &[NodeId], chunk: usize) -> Received {
    let received: Received = Arc::default();
    let sink = received.clone();
    let sub = subscription(
        session,
        DataChangeCallback::new(move |dv, item| {
            sink.lock()
                .expect("the sample map's lock")
                .entry(item.item_to_monitor().node_id.clone())
                .or_default()
                .push(dv);
        }),
    )
    .await;
    for part in ids.chunks(chunk) {
        let items: Vec<MonitoredItemCreateRequest> = part
            .iter()
            .map(|id| {
                let mut r = MonitoredItemCreateRequest::from(id.clone());
                r.requested_parameters.sampling_interval = 0.0;
                r.requested_parameters.queue_size = 10;
                r
            })
            .collect();
        let created = session
            .create_monitored_items(sub, TimestampsToReturn::Both, items)
            .await
            .expect("monitored items");
        assert!(
            created.iter().all(|c| c.result.status_code.is_good()),
            "every item created"
        );
    }
    received
}

fn u64_of(v: &DataValue) -> u64 {
    match v.value {
        Some(Variant::UInt64(x)) => x,
        Some(Variant::UInt32(x)) => x.into(),
        Some(Variant::Int64(x)) => x as u64,
        Some(Variant::Int32(x)) => x as u64,
        ref other => panic!("not a counter: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_arrive_contiguous_and_match_ground_truth() {
    let sim = start(|_| {}).await;
    let session = connect(&sim).await;
    let names = [
        "Filler.BottlesFilled",
        "Filler.BottlesRejected",
        "Capper.CapsApplied",
        "Labeler.LabelsApplied",
        "Conveyor.ItemsTransported",
    ];
    let mut ids = Vec::new();
    for n in names {
        ids.push(node(&session, n).await);
    }
    let received = subscribe(&session, &ids, 100).await;
    eventually(
        "20 changes of every counter",
        Duration::from_secs(15),
        || async {
            let r = received.lock().unwrap();
            ids.iter()
                .all(|id| r.get(id).is_some_and(|v| v.len() >= 20))
                .then_some(())
        },
    )
    .await;
    let r = received.lock().unwrap().clone();
    for (name, id) in names.iter().zip(&ids) {
        let values: Vec<u64> = r[id].iter().map(u64_of).collect();
        for w in values.windows(2) {
            assert_eq!(
                w[1],
                w[0] + 1,
                "{name} jumped from {} to {}: {values:?}",
                w[0],
                w[1]
            );
        }
        let truth = sim
            .sim
            .node_stats(&format!("nsu={NS};s={name}"))
            .expect("ground truth");
        let last = *values.last().unwrap();
        let t: i128 = match truth.last {
            simulator::model::Value::Int(t) => t.into(),
            simulator::model::Value::UInt(t) => t.into(),
            ref other => panic!("counter ground truth is an integer: {other:?}"),
        };
        assert!(
            i128::from(last) <= t,
            "{name}: received {last} beyond the produced {t}"
        );
        // Every produced value since the subscription's first sample reached the client,
        // except those still in flight (at most one publishing interval, 2 values at 100 ms).
        assert!(
            t - i128::from(last) <= 3,
            "{name}: produced {t}, received only up to {last}"
        );
        // Source timestamps carry scan jitter: not all on the same millisecond phase.
        let phases: std::collections::HashSet<i64> = r[id]
            .iter()
            .filter_map(|d| {
                d.source_timestamp
                    .map(|t| t.as_chrono().timestamp_subsec_micros() as i64 % 100_000)
            })
            .collect();
        assert!(
            phases.len() > 5,
            "{name}: source timestamps carry jitter: {:?}",
            r[id]
                .iter()
                .take(5)
                .map(|d| d.source_timestamp)
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_checked_for_type_range_and_access_and_the_speed_follows_its_setpoint() {
    let sim = start(|_| {}).await;
    let session = connect(&sim).await;
    let sp = node(&session, "Filler.SpeedSetpoint").await;
    let speed = node(&session, "Filler.Speed").await;
    let serial = node(&session, "Filler.SerialNumber").await;
    let recipe = node(&session, "Filler.RecipeName").await;

    assert_eq!(
        write(&session, &sp, Variant::Double(900.0)).await,
        StatusCode::Good
    );
    assert_eq!(
        read(&session, &sp).await.value,
        Some(Variant::Double(900.0)),
        "read right after write"
    );

    assert_eq!(
        write(&session, &sp, Variant::Double(5000.0)).await,
        StatusCode::BadOutOfRange
    );
    assert_eq!(
        write(&session, &sp, Variant::Double(-1.0)).await,
        StatusCode::BadOutOfRange
    );
    assert_eq!(
        write(&session, &sp, Variant::Int32(700)).await,
        StatusCode::BadTypeMismatch
    );
    assert_eq!(
        read(&session, &sp).await.value,
        Some(Variant::Double(900.0)),
        "refused writes leave the value"
    );

    assert_eq!(
        write(&session, &speed, Variant::Double(1.0)).await,
        StatusCode::BadNotWritable
    );
    assert_eq!(
        write(&session, &serial, Variant::from("X")).await,
        StatusCode::BadNotWritable
    );

    assert_eq!(
        write(&session, &recipe, Variant::from("Sparkling 1 l")).await,
        StatusCode::Good
    );
    assert_eq!(
        read(&session, &recipe).await.value,
        Some(Variant::from("Sparkling 1 l"))
    );

    let reached = eventually(
        "Filler.Speed within 2 % of 900",
        Duration::from_secs(15),
        || async {
            let v = f64_of(&read(&session, &speed).await);
            ((v - 900.0).abs() < 18.0).then_some(v)
        },
    )
    .await;
    assert!(reached > 882.0);
    assert_eq!(
        sim.sim
            .node_stats(&format!("nsu={NS};s=Filler.SpeedSetpoint"))
            .unwrap()
            .last,
        simulator::model::Value::Float(900.0),
        "the model holds the written setpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_counters_returns_its_outputs_and_checks_arguments() {
    let sim = start(|_| {}).await;
    let session = connect(&sim).await;
    let filler = node(&session, "Filler").await;
    let reset = node(&session, "Filler.ResetCounters").await;
    let filled = node(&session, "Filler.BottlesFilled").await;
    let before = eventually(
        "BottlesFilled above 10",
        Duration::from_secs(10),
        || async {
            let v = u64_of(&read(&session, &filled).await);
            (v > 10).then_some(v)
        },
    )
    .await;

    let call = |args: Option<Vec<Variant>>| {
        let session = session.clone();
        let req = CallMethodRequest::from((filler.clone(), reset.clone(), args));
        async move { session.call_one(req).await.expect("call") }
    };
    let ok = call(Some(vec![Variant::from("shift change")])).await;
    assert_eq!(ok.status_code, StatusCode::Good);
    let out = ok.output_arguments.expect("outputs");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0], Variant::UInt32(2), "two counters reset");
    let Variant::UInt64(previous) = out[1] else {
        panic!("PreviousTotal is UInt64: {:?}", out[1])
    };
    assert!(
        previous >= before,
        "previous total {previous} covers BottlesFilled {before}"
    );
    let after = u64_of(&read(&session, &filled).await);
    assert!(
        after < before,
        "BottlesFilled restarted: {after} < {before}"
    );

    assert_eq!(
        call(None).await.status_code,
        StatusCode::BadArgumentsMissing
    );
    assert_eq!(
        call(Some(vec![Variant::Int32(1)])).await.status_code,
        StatusCode::BadInvalidArgument
    );
    assert_eq!(
        call(Some(vec![Variant::from("a"), Variant::from("b")]))
            .await
            .status_code,
        StatusCode::BadTooManyArguments
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_schedule_restarts_the_endpoint_at_the_stated_time_and_clients_reconnect() {
    let sim = start(|c| c.faults = vec!["restart@2s:1500ms".parse().unwrap()]).await;
    let started = Instant::now();
    let mut client = connect_with(
        &sim,
        SecurityPolicy::None,
        MessageSecurityMode::None,
        IdentityToken::Anonymous,
    )
    .await
    .expect("connects");
    let session = client.session.clone();
    let events = Arc::new(Mutex::new(Vec::<(Duration, String)>::new()));
    let log = events.clone();
    let mut stream = client.events.take().unwrap();
    tokio::spawn(async move {
        while let Some(e) = stream.next().await {
            eprintln!("{:?} event {e:?}", started.elapsed());
            let tag = match e {
                Ok(SessionPollResult::ConnectionLost(_)) => "lost",
                Ok(SessionPollResult::Reconnected(_)) => "reconnected",
                _ => continue,
            };
            log.lock()
                .unwrap()
                .push((started.elapsed(), tag.to_owned()));
        }
    });
    session.wait_for_connection().await;
    let filled = node(&session, "Filler.BottlesFilled").await;
    let before = u64_of(&read(&session, &filled).await);

    let (lost, back) = eventually(
        "disconnect and reconnect",
        Duration::from_secs(20),
        || async {
            let e = events.lock().unwrap();
            let lost = e.iter().find(|(_, t)| t == "lost")?.0;
            let back = e
                .iter()
                .find(|(t, tag)| tag == "reconnected" && *t > lost)?
                .0;
            Some((lost, back))
        },
    )
    .await;
    assert!(
        lost >= Duration::from_millis(1900) && lost < Duration::from_millis(3500),
        "lost at {lost:?}"
    );
    assert!(
        back - lost >= Duration::from_millis(1400),
        "endpoint was down for {:?}",
        back - lost
    );
    let after = eventually(
        "reads work after the restart",
        Duration::from_secs(10),
        || async {
            let r = session
                .read(
                    &[opcua::types::ReadValueId::from(&filled)],
                    TimestampsToReturn::Both,
                    0.0,
                )
                .await
                .ok()?;
            r.first().filter(|d| d.status().is_good()).map(u64_of)
        },
    )
    .await;
    assert!(after > before, "the model kept running: {after} > {before}");
    let stats = sim.sim.stats();
    assert_eq!(stats.restarts, 1);
    let truth = &stats.nodes[&format!("nsu={NS};s=Filler.BottlesFilled")];
    assert!(
        truth.produced_offline >= 10,
        "values produced while down are counted: {truth:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_accepts_username_and_a_wrong_password_is_refused() {
    let sim = start(|c| {
        c.users = vec![("operator".into(), "secret-pw".into())];
        c.anonymous = false;
    })
    .await;
    for (policy, mode) in simulator::all_security() {
        let mut c = connect_with(
            &sim,
            policy,
            mode,
            IdentityToken::new_user_name("operator", "secret-pw"),
        )
        .await
        .unwrap_or_else(|e| panic!("{policy}/{mode:?}: {e}"));
        let h = drive(c.events.take().unwrap());
        c.session.wait_for_connection().await;
        let serial = node(&c.session, "Filler.SerialNumber").await;
        let v = read(&c.session, &serial).await;
        assert!(
            matches!(v.value, Some(Variant::String(_))),
            "{policy}/{mode:?}: {v:?}"
        );
        let _ = c.session.disconnect().await;
        h.abort();
    }
    let bad = connect_retrying(
        &sim,
        SecurityPolicy::Basic256Sha256,
        MessageSecurityMode::SignAndEncrypt,
        IdentityToken::new_user_name("operator", "wrong"),
        0,
    )
    .await;
    let refused = match bad {
        Err(_) => true,
        Ok(mut c) => {
            let h = drive(c.events.take().unwrap());
            matches!(tokio::time::timeout(Duration::from_secs(10), h).await, Ok(Ok(Some(s))) if s.is_bad())
        }
    };
    assert!(refused, "a wrong password must not open a session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_100k_at_1s_starts_in_under_5s_and_keeps_its_rate() {
    let begin = Instant::now();
    let sim = start(|c| c.scale = Some("100000@1s".parse::<ScaleSpec>().unwrap())).await;
    let startup = begin.elapsed();
    eprintln!(
        "scale 100000@1s: endpoint up in {:.2} s",
        startup.as_secs_f64()
    );
    assert!(startup < Duration::from_secs(5), "startup took {startup:?}");
    let t0 = Instant::now();
    let ticks = |s: &simulator::Stats| s.groups.iter().find(|g| g.name == "scale").unwrap().clone();
    let first = ticks(&sim.sim.stats());
    tokio::time::sleep_until((t0 + Duration::from_millis(5_500)).into()).await;
    let stats = sim.sim.stats();
    let last = ticks(&stats);
    let done = last.ticks - first.ticks;
    eprintln!(
        "scale 100000@1s: {done} ticks in 5.5 s, {} late, {:.0} updates/s, process CPU {:.2} s",
        last.late_ticks,
        done as f64 * 100_000.0 / 5.5,
        stats.cpu_s
    );
    assert!(
        (5..=6).contains(&done),
        "5 or 6 ticks in 5.5 s at 1 s, got {done}"
    );
    assert_eq!(last.late_ticks, 0, "no tick started late");
    let c = &stats.nodes[&simulator::scale::id(0)];
    assert_eq!(
        c.produced, last.ticks,
        "a scaled counter changes at every tick"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_subscribed_to_10k_scaled_nodes_at_100ms_sees_every_change() {
    let n = 10_000;
    let sim = start(|c| {
        c.scale = Some(ScaleSpec {
            count: n,
            interval: Duration::from_millis(100),
        })
    })
    .await;
    let session = connect(&sim).await;
    let ns = session
        .get_namespace_index(simulator::scale::NAMESPACE)
        .await
        .unwrap();
    let ids: Vec<NodeId> = (0..n)
        .map(|i| NodeId::new(ns, simulator::scale::node(i).0))
        .collect();
    let t = Instant::now();
    let received = subscribe(&session, &ids, 1000).await;
    eprintln!(
        "10k monitored items created in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let cpu0 = simulator::runtime::process_cpu_seconds();
    let count0: usize = received.lock().unwrap().values().map(Vec::len).sum();
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let count1: usize = received.lock().unwrap().values().map(Vec::len).sum();
    let rate = (count1 - count0) as f64 / window.elapsed().as_secs_f64();
    let cpu = (simulator::runtime::process_cpu_seconds() - cpu0) / window.elapsed().as_secs_f64();
    eprintln!("10k scaled nodes @100ms: {rate:.0} notifications/s received; simulator+client process CPU {:.0} % of one core", cpu * 100.0);

    // Stop the values, let the last notifications arrive, then compare with ground truth.
    sim.sim.inject(FaultKind::Freeze {
        duration: Duration::from_secs(30),
    });
    let mut last_total = 0;
    eventually("notifications settle", Duration::from_secs(10), || {
        let total: usize = received.lock().unwrap().values().map(Vec::len).sum();
        let settled = total == last_total;
        last_total = total;
        async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            settled.then_some(())
        }
    })
    .await;
    let r = received.lock().unwrap();
    let mut gaps = 0;
    let mut mismatched = 0;
    for (i, id) in ids.iter().enumerate() {
        let values = r.get(id).map(Vec::as_slice).unwrap_or_default();
        let truth = sim.sim.node_stats(&simulator::scale::id(i)).unwrap();
        if simulator::scale::is_counter(i) {
            let v: Vec<u64> = values.iter().map(u64_of).collect();
            gaps += v.windows(2).filter(|w| w[1] != w[0] + 1).count();
        } else if let Some(Variant::Boolean(_)) = values.first().and_then(|d| d.value.clone()) {
            gaps += values
                .windows(2)
                .filter(|w| w[0].value == w[1].value)
                .count();
        }
        let last = values.last().and_then(|d| d.value.clone());
        let expected = simulator::convert::to_variant(&truth.last, simulator::scale::node(i).1);
        if last != Some(expected) {
            mismatched += 1;
        }
    }
    assert_eq!(gaps, 0, "every change of every scaled node arrives");
    assert_eq!(
        mismatched, 0,
        "the last value received is the last value produced"
    );
    assert!(
        rate > 90_000.0,
        "about 100,000 changes/s expected, got {rate:.0}"
    );
}

fn run_simulator(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_opcua-simulator"))
        .args(args)
        .output()
        .expect("run opcua-simulator");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_profile_and_nodeset_input_exit_2_naming_file_and_element() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let pki = pki.to_str().unwrap();
    let nodeset = dir.path().join("line.NodeSet2.xml");
    std::fs::write(&nodeset, simulator::BOTTLING_LINE_NODESET).unwrap();
    let nodeset = nodeset.to_str().unwrap();

    let profile = dir.path().join("bad.toml");
    std::fs::write(
        &profile,
        "seed = 1\n[[group]]\nname = \"g\"\nrate = \"100ms\"\nrat = \"1s\"\n",
    )
    .unwrap();
    let (code, err) = run_simulator(&[
        "--port",
        "0",
        "--pki-dir",
        pki,
        "--profile",
        profile.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml:5:") && err.contains("rat"),
        "names file, line and key: {err}"
    );

    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        "[[group]]\nname = \"g\"\nrate = \"1s\"\n  [[group.node]]\n  node = \"nsu=urn:opcua-connector:bottling-line;s=Filler.Nope\"\n  sim = { kind = \"counter\" }\n",
    )
    .unwrap();
    let (code, err) = run_simulator(&[
        "--port",
        "0",
        "--pki-dir",
        pki,
        "--nodeset",
        nodeset,
        "--profile",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("missing.toml:5:")
            && err.contains("group[0].node[0]")
            && err.contains("Filler.Nope"),
        "{err}"
    );

    let broken = dir.path().join("broken.NodeSet2.xml");
    let text = simulator::BOTTLING_LINE_NODESET.replacen("</UAVariable>", "</UAVariabel>", 1);
    std::fs::write(&broken, &text).unwrap();
    let (code, err) = run_simulator(&[
        "--port",
        "0",
        "--pki-dir",
        pki,
        "--nodeset",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("broken.NodeSet2.xml:"),
        "names the file and line: {err}"
    );

    let bad_type = dir.path().join("badtype.NodeSet2.xml");
    let text = simulator::BOTTLING_LINE_NODESET.replacen(
        "DataType=\"Double\"",
        "DataType=\"NoSuchType\"",
        1,
    );
    std::fs::write(&bad_type, &text).unwrap();
    let (code, err) = run_simulator(&[
        "--port",
        "0",
        "--pki-dir",
        pki,
        "--nodeset",
        bad_type.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("badtype.NodeSet2.xml:") && err.contains("<UAVariable NodeId="),
        "names the element: {err}"
    );

    let (code, err) = run_simulator(&["--scale", "lots@1s"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--scale"), "{err}");

    let (code, err) = run_simulator(&["--publish-tick", "500us"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--publish-tick") && err.contains("1ms"),
        "{err}"
    );

    // A spike: a bad duration, then a non-numeric node, each with file, line and key.
    let node = |name: &str, sim: &str, spike: &str| {
        format!(
            "[[group]]\nname = \"g\"\nrate = \"1s\"\n  [[group.node]]\n  node = \"nsu={}\
             ;s=Filler.{name}\"\n  sim = {sim}\n  spike = {spike}\n",
            simulator::BOTTLING_LINE_NAMESPACE
        )
    };
    for (file, text, expected) in [
        (
            "spike-duration.toml",
            node(
                "Speed",
                "{ kind = \"sine\" }",
                "{ every = \"1s\", add = 1.0, length = \"soon\" }",
            ),
            "spike-duration.toml:7: group[0].node[0].spike.length: bad duration \"soon\"",
        ),
        (
            "spike-bool.toml",
            node(
                "Running",
                "{ kind = \"toggle\" }",
                "{ every = \"1s\", add = 1.0, length = \"100ms\" }",
            ),
            "spike-bool.toml:7: group[0].node[0].spike: nsu=urn:opcua-connector:bottling-line;s=Filler.Running: a spike needs a numeric variable, not Boolean",
        ),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let (code, err) = run_simulator(&[
            "--port",
            "0",
            "--pki-dir",
            pki,
            "--profile",
            path.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(expected), "{expected} in: {err}");
    }
}

//! The health watcher against real control sockets (twinwall-control servers standing in
//! for the vrrp and sync services' status answers): the slot is marked good exactly once,
//! only after the ruleset is done, VRRP has decided and sync sees its peer.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twinwall_control::{Response, Server};
use twinwall_init::health::{self, HealthPolicy, SlotControl};
use twinwall_init::service::{Backoff, Exit, Kind, Service, ServiceSpec};
use twinwall_init::status::{Mode, Shared, Status};

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Marks(Arc<Mutex<Vec<String>>>);

impl SlotControl for Marks {
    fn mark_good(&mut self, slot: &str) -> Result<(), String> {
        self.0.lock().unwrap().push(slot.to_string());
        Ok(())
    }
}

fn serve(dir: &std::path::Path, name: &str, answer: Arc<Mutex<Value>>) -> Server {
    Server::bind(
        dir,
        name,
        Arc::new(move |_req| Response::ok(answer.lock().unwrap().clone())),
    )
    .unwrap()
}

fn ruleset_done() -> Service {
    let spec = ServiceSpec {
        name: "ruleset".into(),
        program: "/bin/true".into(),
        args: vec![],
        kind: Kind::Oneshot,
    };
    let mut s = Service::new(spec, Backoff::default());
    s.started(Instant::now(), 1);
    s.exited(Instant::now(), Exit::Code(0));
    s
}

fn watch(slot: &str, marks: &Arc<Mutex<Vec<String>>>) -> health::Watch {
    health::Watch {
        slot: Some(slot.into()),
        control: Box::new(Marks(marks.clone())),
        nft: None,
        console: false,
        shutdown: None,
        deadline: None,
    }
}

#[test]
fn health_marks_the_slot_good_once_vrrp_decided_and_sync_connected() {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tw-health-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vrrp = Arc::new(Mutex::new(json!({"groups": [{"state": "initialize"}]})));
    let sync = Arc::new(Mutex::new(json!({"peer_up": false})));
    let v_server = serve(&dir, "vrrp", vrrp.clone());
    let s_server = serve(&dir, "sync", sync.clone());
    let mut st = Status::new(Mode::Pid1);
    st.services = vec![ruleset_done()];
    st.services_up = true;
    let shared = Shared::new(st);
    let marks = Arc::new(Mutex::new(Vec::new()));
    let policy = HealthPolicy {
        vrrp: true,
        sync: true,
        peer_absent_after: Duration::from_secs(3600),
    };
    let h = health::watch(shared.clone(), dir.clone(), policy, watch("b", &marks)).unwrap();
    // Not yet: VRRP undecided, sync not connected.
    std::thread::sleep(Duration::from_millis(600));
    assert!(marks.lock().unwrap().is_empty());
    *vrrp.lock().unwrap() = json!({"groups": [{"state": "backup"}]});
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        marks.lock().unwrap().is_empty(),
        "sync is still not connected"
    );
    let pending = shared.snapshot().health_pending;
    assert_eq!(
        pending,
        ["sync peer not connected (tolerated as absent after 3600 s)"]
    );
    *sync.lock().unwrap() = json!({"peer_up": true});
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "not marked; pending: {:?}",
            shared.snapshot().health_pending
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(*marks.lock().unwrap(), ["b"]);
    assert!(shared.snapshot().slot_marked_good);
    // The servers go first: their Drop wakes the accept loop through the socket file.
    drop((v_server, s_server));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A lone node: VRRP became master (no peer adverts), sync answers but never sees its
/// peer. The slot is marked good once the peer has been absent for the configured time,
/// and the report says so; while the sync socket is gone, it is not.
#[test]
fn health_accepts_an_absent_peer_after_the_configured_time() {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("tw-health-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vrrp = Arc::new(Mutex::new(
        json!({"groups": [{"name": "edge", "state": "master",
        "routers": [{"vrid": 51, "device": "eth0", "state": "master"}]}]}),
    ));
    let sync = Arc::new(Mutex::new(json!({"peer_up": false})));
    let v_server = serve(&dir, "vrrp", vrrp);
    let mut st = Status::new(Mode::Pid1);
    st.services = vec![ruleset_done()];
    st.services_up = true;
    let shared = Shared::new(st);
    let marks = Arc::new(Mutex::new(Vec::new()));
    let policy = HealthPolicy {
        vrrp: true,
        sync: true,
        peer_absent_after: Duration::from_secs(1),
    };
    let h = health::watch(shared.clone(), dir.clone(), policy, watch("a", &marks)).unwrap();
    // No sync socket at all: broken, not absent — past the tolerance, still pending.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(marks.lock().unwrap().is_empty());
    assert_eq!(shared.snapshot().health_pending, ["sync unreachable"]);
    let s_server = serve(&dir, "sync", sync);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.is_finished() {
        assert!(
            Instant::now() < deadline,
            "not marked; pending: {:?}",
            shared.snapshot().health_pending
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(*marks.lock().unwrap(), ["a"]);
    let snap = shared.snapshot();
    assert_eq!(
        snap.health_report,
        [
            "vrrp group edge master (vrid 51 on eth0 master)",
            "sync peer absent"
        ]
    );
    let phase = snap.phases.iter().find(|p| p.name == "health").unwrap();
    assert!(phase.detail.contains("slot a marked good"), "{phase:?}");
    drop((v_server, s_server));
    let _ = std::fs::remove_dir_all(&dir);
}

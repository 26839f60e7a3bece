//! Interoperability with the real `grub-editenv` (package grub-common): blocks we write
//! are read by grub-editenv and blocks it writes are read by us.

use std::process::Command;

use twinwall_image::{BootState, Grubenv, GrubenvFile, Slot, SlotControl};

fn editenv(path: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("grub-editenv")
        .arg(path)
        .args(args)
        .output()
        .expect("grub-editenv is installed (scripts/deps.sh image)");
    assert!(
        out.status.success(),
        "grub-editenv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn grub_editenv_reads_what_we_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    let mut f = GrubenvFile::create(&path, &BootState::fresh()).unwrap();
    f.set_try_once(Slot::B).unwrap();
    let mut env = f.read_env().unwrap();
    env.set("NOTE", "back\\slash and\nnewline").unwrap();
    f.write_env(&env).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024);
    let listed = editenv(&path, &["list"]);
    assert_eq!(
        listed,
        "ORDER=B A\nA_OK=1\nA_TRY=0\nB_OK=1\nB_TRY=0\nNOTE=back\\slash and\nnewline\n"
    );
}

#[test]
fn we_read_what_grub_editenv_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    editenv(&path, &["create"]);
    editenv(
        &path,
        &[
            "set",
            "ORDER=B A",
            "A_OK=1",
            "A_TRY=0",
            "B_OK=1",
            "B_TRY=1",
            "X=a\\b",
        ],
    );
    let f = GrubenvFile::new(&path);
    let env: Grubenv = f.read_env().unwrap();
    assert_eq!(env.get("X"), Some("a\\b"));
    let state = f.state().unwrap();
    assert_eq!(state.order, [Slot::B, Slot::A]);
    assert!(state.b.tried && state.b.ok);
    // B was tried and never confirmed: GRUB boots A next.
    assert_eq!(f.next_slot().unwrap(), Slot::A);
    let mut f = f;
    f.mark_good(Slot::B).unwrap();
    assert!(editenv(&path, &["list"]).contains("B_TRY=0\n"));
    assert!(
        editenv(&path, &["list"]).contains("X=a\\b\n"),
        "other variables are kept"
    );
}

#[test]
fn malformed_file_is_rejected_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grubenv");
    std::fs::write(&path, b"# GRUB Environment Block\nA_OK=1\n").unwrap();
    let err = GrubenvFile::new(&path).state().unwrap_err().to_string();
    assert!(err.contains("grubenv") && err.contains("1024"), "{err}");
    let before = std::fs::read(&path).unwrap();
    assert!(GrubenvFile::new(&path).mark_good(Slot::A).is_err());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a failed update changes nothing"
    );
}

#[test]
fn init_marks_the_running_slot_good_on_the_esp() {
    let esp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(esp.path().join("grub")).unwrap();
    let mut s = BootState::fresh();
    s.set_try_once(Slot::B);
    let (tried, slot, _) = s.grub_boot();
    assert_eq!(slot, Slot::B);
    GrubenvFile::create(esp.path().join("grub/grubenv"), &tried).unwrap();
    twinwall_image::slot::mark_good_on_esp(esp.path(), "b").unwrap();
    let listed = editenv(&esp.path().join("grub/grubenv"), &["list"]);
    assert!(
        listed.contains("B_OK=1\nB_TRY=0\n") && listed.starts_with("ORDER=B A\n"),
        "{listed}"
    );
    let e = twinwall_image::slot::mark_good_on_esp(esp.path(), "c").unwrap_err();
    assert!(e.to_string().contains("unknown slot \"c\""), "{e}");
}

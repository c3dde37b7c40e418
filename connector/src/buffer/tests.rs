use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

/// Every test message is 12 bytes, so a record is 36 bytes.
const RECORD: u64 = HEADER_LEN as u64 + 12;

fn msg(i: u64) -> Vec<u8> {
    format!("message {i:04}").into_bytes()
}

fn config(dir: &Path, max_records: u64, segment_records: u64, when_full: WhenFull) -> BufferConfig {
    BufferConfig {
        dir: dir.to_path_buf(),
        max_bytes: max_records * RECORD,
        when_full,
        segment_bytes: segment_records * RECORD,
        min_free: 0,
    }
}

/// Large enough that nothing is dropped; three records per segment.
fn roomy(dir: &Path) -> BufferConfig {
    config(dir, 1000, 3, WhenFull::DropOldest)
}

fn append_n(buffer: &mut Buffer, ids: std::ops::RangeInclusive<u64>) {
    for i in ids {
        assert_eq!(buffer.append(&msg(i)).unwrap(), i);
    }
}

fn unsent_ids(buffer: &mut Buffer) -> Vec<u64> {
    let batch = buffer.next_unsent(usize::MAX).unwrap();
    for (id, payload) in &batch {
        assert_eq!(payload, &msg(*id), "payload of id {id}");
    }
    batch.into_iter().map(|(id, _)| id).collect()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    names.sort();
    names
}

fn segment_path(dir: &Path, first_id: u64) -> PathBuf {
    dir.join(segment::file_name(first_id))
}

/// Simulates `kill -9`: no drop, no cursor save (written data is already in the kernel).
fn kill(buffer: Buffer) {
    std::mem::forget(buffer);
}

#[test]
fn appends_are_handed_out_in_order_and_leave_after_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=5);

    let first = buffer.next_unsent(3).unwrap();
    assert_eq!(first.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(first[0].1, msg(1));
    assert_eq!(unsent_ids(&mut buffer), [4, 5]);
    assert!(unsent_ids(&mut buffer).is_empty());

    for id in 1..=5 {
        buffer.ack(id).unwrap();
    }
    let stats = buffer.stats();
    assert_eq!(stats.appended, 5);
    assert_eq!(stats.acked, 5);
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.oldest_pending_age, None);
    assert!(unsent_ids(&mut buffer).is_empty());
    assert!(tmp.path().join("mqtt").is_dir());
}

#[test]
fn out_of_order_acks_advance_the_low_water_mark_over_contiguous_acks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=6);
    unsent_ids(&mut buffer);

    buffer.ack(3).unwrap();
    buffer.ack(2).unwrap();
    buffer.ack(3).unwrap(); // repeated: ignored
    assert_eq!(buffer.acked_low, 0);
    assert_eq!(buffer.stats().pending, 4);
    buffer.ack(1).unwrap();
    assert_eq!(buffer.acked_low, 3);
    buffer.ack(5).unwrap();
    assert_eq!(buffer.acked_low, 3);
    assert_eq!(buffer.stats().acked, 4);
    assert_eq!(buffer.stats().pending, 2);

    // Out-of-order acks are kept in the cursor too: a clean restart sends exactly 4 and 6.
    buffer.close().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    assert_eq!(buffer.stats().replayed, 2);
    assert_eq!(unsent_ids(&mut buffer), [4, 6]);
}

#[test]
fn ack_of_an_id_never_appended_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=2);
    let err = buffer.ack(3).unwrap_err();
    assert!(
        matches!(err, BufferError::UnknownId { id: 3, next_id: 3 }),
        "{err}"
    );
    assert_eq!(buffer.stats().pending, 2);
}

#[test]
fn reopen_replays_exactly_the_unacked_messages_in_order_and_ids_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=10);
    unsent_ids(&mut buffer);
    for id in 1..=4 {
        buffer.ack(id).unwrap();
    }
    drop(buffer);

    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    let stats = buffer.stats();
    assert_eq!(stats.replayed, 6);
    assert_eq!(stats.pending, 6);
    assert!(stats.oldest_pending_age.is_some());
    assert_eq!(unsent_ids(&mut buffer), (5..=10).collect::<Vec<_>>());
    assert_eq!(buffer.append(&msg(11)).unwrap(), 11);
}

#[test]
fn ids_continue_after_restart_when_everything_was_acked() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=7);
    for id in 1..=7 {
        buffer.ack(id).unwrap();
    }
    buffer.close().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    assert_eq!(buffer.stats().replayed, 0);
    assert!(unsent_ids(&mut buffer).is_empty());
    assert_eq!(buffer.append(&msg(8)).unwrap(), 8);
}

#[test]
fn torn_tail_record_is_cut_and_ids_continue_after_the_last_good_record() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000, 10, WhenFull::DropOldest);
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=5);
    kill(buffer);

    // A crash in the middle of writing record 5.
    let path = segment_path(&tmp.path().join("mqtt"), 1);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(4 * RECORD + 10).unwrap();

    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(buffer.stats().truncated, 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), 4 * RECORD);
    assert_eq!(unsent_ids(&mut buffer), [1, 2, 3, 4]);
    assert_eq!(buffer.append(&msg(5)).unwrap(), 5);
    drop(buffer);

    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(buffer.stats().truncated, 0);
    assert_eq!(unsent_ids(&mut buffer), [1, 2, 3, 4, 5]);
}

#[test]
fn corrupt_crc_is_cut_at_open_and_later_segments_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = roomy(tmp.path());
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=7); // segments 1..3, 4..6, 7
    kill(buffer);

    // Flip one payload byte of record 6, the last of the second segment.
    let path = segment_path(&tmp.path().join("mqtt"), 4);
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(2 * RECORD + HEADER_LEN as u64 + 3))
        .unwrap();
    file.write_all(b"X").unwrap();
    drop(file);

    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(buffer.stats().truncated, 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), 2 * RECORD);
    assert_eq!(unsent_ids(&mut buffer), [1, 2, 3, 4, 5, 7]);
    assert_eq!(buffer.append(&msg(8)).unwrap(), 8);
}

#[test]
fn record_damaged_after_open_is_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=3);
    let path = segment_path(&tmp.path().join("mqtt"), 1);
    let mut file = OpenOptions::new().write(true).open(&path).unwrap();
    file.seek(SeekFrom::Start(RECORD + HEADER_LEN as u64))
        .unwrap();
    file.write_all(b"X").unwrap();

    assert_eq!(unsent_ids(&mut buffer), [1, 3]);
    let stats = buffer.stats();
    assert_eq!(stats.corrupt, 1);
    assert_eq!(stats.pending, 2);
}

#[test]
fn drop_oldest_evicts_the_oldest_segment_and_counts_it() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 9, 3, WhenFull::DropOldest);
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=9);
    assert_eq!(buffer.stats().bytes_on_disk, 9 * RECORD);
    assert!(!buffer.is_full());
    buffer.next_unsent(2).unwrap();
    buffer.ack(2).unwrap();

    assert_eq!(buffer.append(&msg(10)).unwrap(), 10);
    let stats = buffer.stats();
    assert_eq!(stats.dropped, 2, "ids 1 and 3 were pending, 2 was acked");
    assert_eq!(stats.pending, 7);
    assert!(stats.bytes_on_disk <= cfg.max_bytes);
    let dir = tmp.path().join("mqtt");
    assert_eq!(
        segment_files(&dir),
        [4, 7, 10].map(segment::file_name).to_vec()
    );
    // A late ack of an evicted message is harmless.
    buffer.ack(1).unwrap();
    assert_eq!(unsent_ids(&mut buffer), (4..=10).collect::<Vec<_>>());

    drop(buffer);
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(unsent_ids(&mut buffer), (4..=10).collect::<Vec<_>>());
}

#[test]
fn pause_refuses_with_full_and_accepts_again_after_acks_free_a_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 9, 3, WhenFull::Pause);
    let mut buffer = Buffer::open(&cfg, "hub").unwrap();
    append_n(&mut buffer, 1..=9);

    let err = buffer.append(&msg(10)).unwrap_err();
    assert!(matches!(err, BufferError::Full { .. }), "{err}");
    assert!(buffer.is_full());
    assert_eq!(buffer.stats().dropped, 0);
    assert_eq!(unsent_ids(&mut buffer), (1..=9).collect::<Vec<_>>());

    buffer.ack(1).unwrap();
    buffer.ack(2).unwrap();
    assert!(buffer.is_full(), "no segment freed yet");
    assert!(matches!(
        buffer.append(&msg(10)),
        Err(BufferError::Full { .. })
    ));
    buffer.ack(3).unwrap();
    assert!(!buffer.is_full());
    assert_eq!(buffer.append(&msg(10)).unwrap(), 10);
    assert_eq!(unsent_ids(&mut buffer), [10]);
}

#[test]
fn segments_are_deleted_once_fully_acked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mqtt");
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=8);
    assert_eq!(
        segment_files(&dir),
        [1, 4, 7].map(segment::file_name).to_vec()
    );

    for id in [4, 5, 6, 1, 2] {
        buffer.ack(id).unwrap();
    }
    assert_eq!(
        segment_files(&dir),
        [1, 4, 7].map(segment::file_name).to_vec()
    );
    buffer.ack(3).unwrap();
    assert_eq!(segment_files(&dir), [7].map(segment::file_name).to_vec());
    assert_eq!(buffer.stats().bytes_on_disk, 2 * RECORD);

    // The active segment stays until it is full and the next one starts.
    buffer.ack(7).unwrap();
    buffer.ack(8).unwrap();
    append_n(&mut buffer, 9..=9);
    buffer.ack(9).unwrap();
    assert_eq!(segment_files(&dir), [7].map(segment::file_name).to_vec());
    append_n(&mut buffer, 10..=10);
    assert_eq!(segment_files(&dir), [10].map(segment::file_name).to_vec());
    assert_eq!(buffer.stats().bytes_on_disk, RECORD);
}

#[test]
fn rewind_hands_out_every_unacked_message_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=5);
    assert_eq!(unsent_ids(&mut buffer), [1, 2, 3, 4, 5]);
    buffer.ack(2).unwrap();
    buffer.ack(4).unwrap();

    buffer.rewind();
    assert_eq!(unsent_ids(&mut buffer), [1, 3, 5]);
    assert!(unsent_ids(&mut buffer).is_empty());
    append_n(&mut buffer, 6..=6);
    assert_eq!(unsent_ids(&mut buffer), [6]);
}

#[test]
fn kill_9_loses_nothing_that_append_returned_ok_for() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = roomy(tmp.path());
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=20);
    unsent_ids(&mut buffer);
    for id in 1..=5 {
        buffer.ack(id).unwrap();
    }
    kill(buffer);

    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    let replayed = unsent_ids(&mut buffer);
    // Acks younger than the cursor interval may repeat; nothing unacknowledged is missing.
    assert!(replayed.windows(2).all(|w| w[0] < w[1]), "{replayed:?}");
    assert!(
        replayed.ends_with(&(6..=20).collect::<Vec<_>>()),
        "{replayed:?}"
    );
    assert!(replayed.iter().all(|&id| id <= 20));
    assert_eq!(buffer.append(&msg(21)).unwrap(), 21);
}

#[test]
fn cursor_is_saved_at_most_every_interval_and_on_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), 1000, 10, WhenFull::DropOldest);
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=4);
    buffer.cursor_saved_at = Instant::now();
    buffer.ack(1).unwrap();
    assert!(buffer.cursor_dirty, "saved too early");
    std::thread::sleep(CURSOR_INTERVAL);
    buffer.ack(2).unwrap();
    assert!(!buffer.cursor_dirty, "due after the interval");
    buffer.cursor_saved_at = Instant::now();
    buffer.ack(3).unwrap();
    kill(buffer);
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(unsent_ids(&mut buffer), [3, 4], "ack 3 was not saved yet");
    buffer.ack(3).unwrap();
    drop(buffer);
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(unsent_ids(&mut buffer), [4]);
}

#[test]
fn unusable_cursor_replays_everything_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = roomy(tmp.path());
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=3);
    buffer.ack(1).unwrap();
    buffer.close().unwrap();
    fs::write(tmp.path().join("mqtt").join(cursor::FILE), b"garbage").unwrap();
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(unsent_ids(&mut buffer), [1, 2, 3]);
}

#[test]
fn a_full_disk_with_pause_names_the_file_and_leaves_the_buffer_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = BufferConfig {
        when_full: WhenFull::Pause,
        ..roomy(tmp.path())
    };
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=2);
    // Every write to /dev/full fails with ENOSPC (and it cannot be truncated either).
    buffer.writer = OpenOptions::new().append(true).open("/dev/full").unwrap();

    let err = buffer.append(&msg(3)).unwrap_err();
    assert!(matches!(err, BufferError::NoSpace { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("cannot write record to "), "{text}");
    assert!(text.contains(&segment::file_name(1)), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert_eq!(buffer.stats().appended, 2);

    append_n(&mut buffer, 3..=4);
    assert_eq!(unsent_ids(&mut buffer), [1, 2, 3, 4]);
    drop(buffer);
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    assert_eq!(buffer.stats().truncated, 0);
    assert_eq!(unsent_ids(&mut buffer), [1, 2, 3, 4]);
}

#[test]
fn a_full_disk_with_drop_oldest_evicts_like_a_full_buffer() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = roomy(tmp.path());
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    append_n(&mut buffer, 1..=4);
    buffer.writer = OpenOptions::new().append(true).open("/dev/full").unwrap();
    // ENOSPC: the oldest segment (ids 1-3) goes, counted; the new record is stored.
    assert_eq!(buffer.append(&msg(5)).unwrap(), 5);
    assert_eq!(buffer.stats().dropped, 3);
    assert_eq!(unsent_ids(&mut buffer), [4, 5]);
}

#[test]
fn a_full_disk_with_everything_delivered_frees_the_segment_and_drops_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for when_full in [WhenFull::DropOldest, WhenFull::Pause] {
        let cfg = BufferConfig {
            when_full,
            ..roomy(&tmp.path().join(format!("{when_full:?}")))
        };
        let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
        append_n(&mut buffer, 1..=2);
        for id in unsent_ids(&mut buffer) {
            buffer.ack(id).unwrap();
        }
        buffer.writer = OpenOptions::new().append(true).open("/dev/full").unwrap();
        // ENOSPC with nothing pending: a new segment, the old one deleted, the record stored.
        assert_eq!(buffer.append(&msg(3)).unwrap(), 3, "{when_full:?}");
        assert_eq!(buffer.stats().dropped, 0);
        assert_eq!(unsent_ids(&mut buffer), [3]);
        assert_eq!(buffer.segments.len(), 1);
    }
}

#[test]
fn oversized_messages_and_bad_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = roomy(tmp.path());
    let mut buffer = Buffer::open(&cfg, "mqtt").unwrap();
    let err = buffer.append(&vec![0; 3 * RECORD as usize]).unwrap_err();
    assert!(matches!(err, BufferError::TooLarge { .. }), "{err}");
    assert_eq!(buffer.append(&msg(1)).unwrap(), 1);
    for name in ["", "../x", ".hidden", "a/b"] {
        assert!(matches!(
            Buffer::open(&cfg, name),
            Err(BufferError::Config(_))
        ));
    }
}

#[test]
fn oldest_pending_age_follows_the_oldest_unacked_message() {
    let tmp = tempfile::tempdir().unwrap();
    let mut buffer = Buffer::open(&roomy(tmp.path()), "mqtt").unwrap();
    append_n(&mut buffer, 1..=1);
    std::thread::sleep(Duration::from_millis(50));
    let second = std::time::Instant::now();
    append_n(&mut buffer, 2..=2);
    let age = buffer.stats().oldest_pending_age.unwrap();
    assert!(age >= Duration::from_millis(50), "{age:?}");
    buffer.ack(1).unwrap();
    let age = buffer.stats().oldest_pending_age.unwrap();
    // The second message's age, however slow the fsyncs of a loaded machine are.
    assert!(age <= second.elapsed(), "{age:?}");
}

/// Prints the append rate (each append fsynced) for docs/buffer.md: for a second or 32 MiB,
/// whichever comes first. The free-space check runs as in production (`min_free` above zero),
/// but with a floor of one byte, and the test writes at most a quarter of the free space: the
/// rate must not depend on how full the test machine's disk is (CI once had 13 MB free, below
/// the default 256 MiB, and the append was rightly refused).
#[test]
fn append_rate_for_10_kib_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = BufferConfig {
        dir: tmp.path().to_path_buf(),
        min_free: 1,
        ..BufferConfig::default()
    };
    let mut buffer = Buffer::open(&cfg, "bench").unwrap();
    let payload = vec![0x5a; 10 << 10];
    let room = files::free_bytes(tmp.path()) / 4 / (payload.len() as u64 + 64);
    let most = room.min(3200);
    if most < 100 {
        eprintln!("buffer append rate: not measured, {room} appends would fill a quarter of the free disk");
        return;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) && n < most {
        buffer.append(&payload).unwrap();
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "buffer append rate: {:.0} appends/s of 10 KiB ({:.1} MiB/s, fsync per append)",
        n as f64 / secs,
        n as f64 * 10.0 / 1024.0 / secs
    );
    assert_eq!(buffer.stats().pending, n);
}

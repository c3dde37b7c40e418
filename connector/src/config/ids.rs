//! The ids a config gives to IoT Hub: device and module ids, and the IoT Plug and Play model
//! id (a DTMI) the connector announces.

/// IoT Hub device and module ids: 1 to 128 of `A-Z a-z 0-9 - : . + % _ # * ? ! ( ) , = @ ; $ '`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-:.+%_#*?!(),=@;$'".contains(&b))
}

/// The longest DTMI of a DTDL Interface (DTDL v3: an Interface's `@id` has at most 128
/// characters).
pub const MAX_MODEL_ID: usize = 128;

/// One segment of a DTMI's path: a letter, then letters, digits and underscores, not ending
/// with an underscore.
pub fn is_dtmi_segment(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A number of a DTMI version: digits without a leading zero, at most `max_digits`.
fn is_version_number(s: &str, max_digits: usize) -> bool {
    (1..=max_digits).contains(&s.len())
        && !s.starts_with('0')
        && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks an IoT Plug and Play model id: a DTMI as DTDL v3 defines it
/// (`dtmi:<segment>(:<segment>)*;<version>[.<minor>]`), with the version a model needs, not
/// in a prefix DTDL reserves, at most 128 characters. The reason when it is not one.
pub fn check_model_id(id: &str) -> Result<(), String> {
    let example = "e.g. \"dtmi:com:example:BottlingLine;1\"";
    let Some(rest) = id.strip_prefix("dtmi:") else {
        return Err(format!(
            "{id:?} is not a DTMI: it starts with \"dtmi:\", {example}"
        ));
    };
    if id.len() > MAX_MODEL_ID {
        return Err(format!(
            "is {} characters long; a model id has at most {MAX_MODEL_ID}",
            id.len()
        ));
    }
    let Some((path, version)) = rest.split_once(';') else {
        return Err(format!(
            "{id:?} has no version: end it with ;1 (or ;2, ...), {example}"
        ));
    };
    let (major, minor) = match version.split_once('.') {
        Some((major, minor)) => (major, Some(minor)),
        None => (version, None),
    };
    if !is_version_number(major, 9) || minor.is_some_and(|m| !is_version_number(m, 6)) {
        return Err(format!(
            "{id:?}: version {version:?} must be a number from 1 to 999999999 (optionally .1 to .999999), without leading zeros"
        ));
    }
    if let Some(bad) = path.split(':').find(|s| !is_dtmi_segment(s)) {
        return Err(format!(
            "{id:?}: segment {bad:?} must start with a letter, hold only letters, digits and _, and not end with _"
        ));
    }
    if ["dtdl", "standard"].contains(&path.split(':').next().unwrap_or_default()) {
        return Err(format!(
            "{id:?} is in a namespace DTDL reserves (dtmi:dtdl:, dtmi:standard:): use your organisation's, {example}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_iot_hub_charset() {
        assert!(is_valid_id("line-a_edge.01:x+%#*?!(),=@;$'"));
        assert!(is_valid_id(&"a".repeat(128)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"a".repeat(129)));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
    }

    #[test]
    fn model_ids_are_versioned_dtmis() {
        for good in [
            "dtmi:com:example:BottlingLine;1",
            "dtmi:opcua_connector:plant_1:line_a;12",
            "dtmi:a;999999999",
            "dtmi:com:example:X;1.2",
        ] {
            assert_eq!(check_model_id(good), Ok(()), "{good}");
        }
        assert!(check_model_id(&format!("dtmi:{};1", "a".repeat(121))).is_ok());
        for (bad, why) in [
            ("com:example:X;1", "starts with \"dtmi:\""),
            ("dtmi:com:example:X", "has no version"),
            ("dtmi:com:example:X;0", "version \"0\""),
            ("dtmi:com:example:X;01", "without leading zeros"),
            ("dtmi:com:example:X;1234567890", "from 1 to 999999999"),
            ("dtmi:com:example:X;1.", "version"),
            ("dtmi:com:example:X;1.0", "version"),
            ("dtmi:com:example:X;x", "version"),
            ("dtmi:com:1example:X;1", "segment \"1example\""),
            ("dtmi:com:example_:X;1", "not end with _"),
            ("dtmi:com::X;1", "segment \"\""),
            ("dtmi:com:ex-ample:X;1", "segment \"ex-ample\""),
            ("dtmi:com:exämple:X;1", "segment"),
            ("dtmi:dtdl:X;1", "reserves"),
            ("dtmi:standard:X;1", "reserves"),
        ] {
            let e = check_model_id(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("dtmi:{};1", "a".repeat(122));
        assert!(check_model_id(&long).unwrap_err().contains("at most 128"));
    }
}

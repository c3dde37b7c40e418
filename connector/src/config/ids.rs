//! The ids a config gives to IoT Hub.

/// IoT Hub device and module ids: 1 to 128 of `A-Z a-z 0-9 - : . + % _ # * ? ! ( ) , = @ ; $ '`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-:.+%_#*?!(),=@;$'".contains(&b))
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
}

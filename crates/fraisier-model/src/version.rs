//! Ordering versions to find "the latest known" one.

use std::cmp::Ordering;

fn parse(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v.strip_prefix('v').unwrap_or(v)).ok()
}

/// Semver order where both parse (a leading `v` is ignored); semver beats non-semver; otherwise
/// plain string order, so that every set of versions has one latest.
pub fn compare(a: &str, b: &str) -> Ordering {
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => a.cmp(b),
    }
}

pub fn latest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions.into_iter().max_by(|a, b| compare(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_semver() {
        assert_eq!(latest(["1.9.0", "2.0.0", "1.10.0"]), Some("2.0.0"));
        assert_eq!(latest(["1.9.0", "1.10.0"]), Some("1.10.0"));
        assert_eq!(latest(["v1.2.0", "1.1.0"]), Some("v1.2.0"));
        assert_eq!(latest(["2.0.0-rc.1", "2.0.0"]), Some("2.0.0"));
        assert_eq!(latest(["nightly", "0.1.0"]), Some("0.1.0"));
        assert_eq!(latest(Vec::<&str>::new()), None);
    }
}

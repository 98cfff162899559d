//! Rates and durations as written in playbooks and provider files (`per_minute:
//! 100`, `15m`, `90d`), and as rekey uses them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A request rate limit: steady requests per second and how many may go back to back.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Human form: `20/s`, `100/min`, `5000/h`, with the burst when above 1.
    pub fn describe(&self) -> String {
        // Prefer the unit that makes the figure whole, as providers document them
        // (5000/h, 2000/min), then the largest unit with a figure of at least 1.
        let units = [(1.0, "s"), (60.0, "min"), (3600.0, "h")];
        let whole = units.iter().find(|(f, _)| {
            let v = self.per_second * f;
            v >= 1.0 && (v - v.round()).abs() < 1e-6
        });
        let (factor, unit) = whole
            .or_else(|| units.iter().find(|(f, _)| self.per_second * f >= 1.0))
            .unwrap_or(&(3600.0, "h"));
        let base = format!("{}/{unit}", trim(self.per_second * factor));
        if self.burst > 1 {
            format!("{base} (burst {})", self.burst)
        } else {
            base
        }
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Parses `0`, `30s`, `15m`, `1h30m`, `90d`. Returns a message fit for a diagnostic.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t).map_err(|e| match e {
        humantime::DurationError::NumberExpected(_)
        | humantime::DurationError::InvalidCharacter(_) => {
            format!("`{text}` is not a duration")
        }
        humantime::DurationError::UnknownUnit { unit, .. } => {
            format!("`{text}` has an unknown unit `{unit}`")
        }
        humantime::DurationError::NumberOverflow => format!("`{text}` is too long a duration"),
        humantime::DurationError::Empty => "the duration is empty".to_owned(),
    })
}

pub const DURATION_HELP: &str =
    "write a number and a unit: `0s`, `30s`, `15m`, `1h30m`, `24h`, `90d`";

pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    let secs = d.as_secs_f64();
    if secs < 1.0 {
        return format!("{}ms", d.as_millis());
    }
    if secs < 60.0 {
        return format!("{:.1}s", secs);
    }
    let total = d.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    match (h, m, s) {
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) if h < 48 => format!("{h}h{m:02}m"),
        (h, _, _) => format!("{}d{}h", h / 24, h % 24),
    }
}

/// A rate limit: exactly one of `per_second`, `per_minute`, `per_hour`, or
/// `requests` with `period`; `burst` is how many requests may go at once.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    #[serde(default)]
    pub per_second: Option<f64>,
    #[serde(default)]
    pub per_minute: Option<f64>,
    #[serde(default)]
    pub per_hour: Option<f64>,
    /// Requests allowed per `period` (e.g. Cloudflare: 1200 per `5m`).
    #[serde(default)]
    pub requests: Option<f64>,
    /// The window for `requests`, e.g. `5m`.
    #[serde(default)]
    pub period: Option<DurationText>,
    /// Requests that may be sent back to back before the rate applies. Default 1.
    #[serde(default)]
    pub burst: Option<i64>,
    /// Where the figure comes from (a documentation page, a contract); not used.
    #[serde(default)]
    pub source: Option<String>,
}

impl RawRate {
    /// Requests per second, when exactly one way of giving the rate is used and it
    /// parses; `validate` explains what is wrong otherwise.
    pub fn per_second(&self) -> Option<f64> {
        let given = [
            self.per_second,
            self.per_minute,
            self.per_hour,
            self.requests,
        ]
        .iter()
        .flatten()
        .count();
        if given != 1 {
            return None;
        }
        let per_second = match (
            self.per_second,
            self.per_minute,
            self.per_hour,
            self.requests,
        ) {
            (Some(s), ..) => s,
            (_, Some(m), ..) => m / 60.0,
            (_, _, Some(h), _) => h / 3600.0,
            (.., Some(r)) => r / self.period.as_ref()?.parse().ok()?.as_secs_f64(),
            _ => return None,
        };
        (per_second.is_finite() && per_second > 0.0).then_some(per_second)
    }
}

/// A duration as written: a number and a unit (`30s`, `15m`, `24h`, `90d`), or a
/// bare `0`. Other bare numbers are refused: `30` could mean seconds or minutes.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
pub enum DurationText {
    Text(String),
    Number(i64),
}

impl DurationText {
    pub fn parse(&self) -> Result<Duration, String> {
        match self {
            DurationText::Text(t) => parse_duration(t),
            DurationText::Number(0) => Ok(Duration::ZERO),
            DurationText::Number(n) => Err(format!("`{n}` has no unit")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(
            parse_duration("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(2500)), "2.5s");
    }

    #[test]
    fn rates_describe_themselves() {
        assert_eq!(
            Rate {
                per_second: 20.0,
                burst: 5
            }
            .describe(),
            "20/s (burst 5)"
        );
        assert_eq!(
            Rate {
                per_second: 4.0,
                burst: 1
            }
            .describe(),
            "4/s"
        );
        assert_eq!(
            Rate {
                per_second: 5000.0 / 3600.0,
                burst: 1
            }
            .describe(),
            "5000/h"
        );
        assert_eq!(
            Rate {
                per_second: 2000.0 / 60.0,
                burst: 1
            }
            .describe(),
            "2000/min"
        );
        assert_eq!(
            Rate {
                per_second: 0.3,
                burst: 1
            }
            .describe(),
            "18/min"
        );
        assert_eq!(
            Rate {
                per_second: 10.0 / 3600.0,
                burst: 1
            }
            .describe(),
            "10/h"
        );
    }
}

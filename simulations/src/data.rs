//! Real profile data from `../shared/data` (see its README): the BDEW H25
//! standard household load profile and hourly weather from a test reference
//! year (Potsdam) or a typical meteorological year (Greensboro, NC), and the
//! PV model that turns weather into energy.
//!
//! PV model (documented in docs/simulations.md): a south-facing roof tilted
//! 30°. Sun position from the day of year (Cooper's declination, the usual
//! equation of time) at the middle of each interval. Plane-of-array
//! irradiance = beam · cos(incidence) + diffuse · (1 + cos β)/2 (isotropic
//! sky) + global · 0.2 · (1 − cos β)/2 (ground albedo 0.2). Where the data
//! gives beam on the horizontal only (TRY), beam normal = beam horizontal /
//! cos(zenith), for the sun above 5° and at most 1,100 W/m². Cell temperature
//! = air + 0.03125 · POA (NOCT 45 °C), power = kWp · POA/1000 · 0.85 ·
//! (1 − 0.004 · (cell − 25 °C)). The simulator uses floats here: they shape
//! the households' physics, never a market decision, and they are rounded to
//! whole Wh before the protocol sees them.

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};

use crate::time::{civil_from_days, days_from_civil, weekday};

/// Where the data lives unless `--data` says otherwise: `DHARTI_DATA`, else
/// the first `shared/data` beside an ancestor of the working directory or of
/// the executable, else the one beside the workspace this was built from.
///
/// Looking at run time matters: a build directory shared between checkouts
/// (CI's cache) keeps the workspace path of whichever checkout compiled
/// this crate first, which may be gone.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DHARTI_DATA") {
        return PathBuf::from(dir);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
    let starts = [std::env::current_dir().ok(), std::env::current_exe().ok()];
    starts
        .iter()
        .flatten()
        .flat_map(|start| start.ancestors())
        .map(|dir| dir.join("shared/data"))
        .find(|candidate| candidate.is_dir())
        .unwrap_or(built)
}

/// BDEW day types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DayType {
    Workday = 0,
    Saturday = 1,
    Sunday = 2,
}

/// The BDEW H25 profile: kWh per quarter-hour for a household normalised to
/// about 1,000,000 kWh a year, per month and day type.
#[derive(Debug)]
pub struct LoadProfile {
    kwh: Vec<[f64; 96]>, // index (month - 1) * 3 + day type
}

/// Kilowatt-hours per year the BDEW profile is normalised to.
pub const BDEW_ANNUAL_KWH: f64 = 1_000_000.0;

impl LoadProfile {
    pub fn load(dir: &Path) -> anyhow::Result<LoadProfile> {
        let path = dir.join("bdew_h25_household_15min.csv");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; point --data or DHARTI_DATA at shared/data",
                path.display()
            )
        })?;
        let mut kwh = vec![[f64::NAN; 96]; 36];
        for (n, line) in text.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            ensure!(
                f.len() == 5,
                "{}:{}: expected 5 fields",
                path.display(),
                n + 1
            );
            let month: usize = f[0]
                .parse()
                .with_context(|| format!("{}:{}: month", path.display(), n + 1))?;
            let day_type = match f[1] {
                "workday" => 0,
                "saturday" => 1,
                "sunday_holiday" => 2,
                other => bail!("{}:{}: unknown day type {other:?}", path.display(), n + 1),
            };
            let slot: usize = f[2]
                .parse()
                .with_context(|| format!("{}:{}: slot", path.display(), n + 1))?;
            let value: f64 = f[4]
                .parse()
                .with_context(|| format!("{}:{}: energy", path.display(), n + 1))?;
            ensure!(
                (1..=12).contains(&month) && slot < 96,
                "{}:{}: month or slot out of range",
                path.display(),
                n + 1
            );
            kwh[(month - 1) * 3 + day_type][slot] = value;
        }
        ensure!(
            kwh.iter().flatten().all(|v| v.is_finite()),
            "{} misses some month, day type or slot",
            path.display()
        );
        Ok(LoadProfile { kwh })
    }

    /// kWh of quarter-hour `slot` (0..96) on a normalised household.
    pub fn kwh(&self, month: u32, day_type: DayType, slot: usize) -> f64 {
        self.kwh[(month as usize - 1) * 3 + day_type as usize][slot]
    }
}

/// Day type of a local day number (holidays are not modelled: Sundays only).
pub fn day_type(days: i64) -> DayType {
    match weekday(days) {
        5 => DayType::Saturday,
        6 => DayType::Sunday,
        _ => DayType::Workday,
    }
}

#[derive(Clone, Copy, Debug)]
struct Hour {
    /// Beam normal irradiance if the data has it (TMY3), W/m².
    dni: Option<f64>,
    /// Beam on the horizontal (TRY), W/m².
    beam_horizontal: f64,
    diffuse_horizontal: f64,
    temp_c: f64,
}

/// One site's hourly weather for a 365-day year.
#[derive(Debug)]
pub struct Weather {
    pub name: &'static str,
    pub latitude_deg: f64,
    pub longitude_deg: f64,
    /// Local standard time of the data (and of the load profile), hours from UTC.
    pub utc_offset_h: i64,
    hours: Vec<Hour>,
}

fn field(fields: &[&str], i: usize, path: &Path, line: usize) -> anyhow::Result<f64> {
    fields
        .get(i)
        .and_then(|f| f.trim().parse::<f64>().ok())
        .with_context(|| {
            format!(
                "{}:{}: field {} is not a number",
                path.display(),
                line,
                i + 1
            )
        })
}

impl Weather {
    pub fn load(dir: &Path, name: &str) -> anyhow::Result<Weather> {
        let (file, site) = match name {
            "try2010_potsdam" => (
                "try2010_potsdam_hourly.csv",
                ("try2010_potsdam", 52.38, 13.07, 1),
            ),
            "tmy3_greensboro" => (
                "tmy3_greensboro_nc_hourly.csv",
                ("tmy3_greensboro", 36.10, -79.95, -5),
            ),
            other => bail!("unknown weather {other:?}"),
        };
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; point --data or DHARTI_DATA at shared/data",
                path.display()
            )
        })?;
        let mut hours = Vec::with_capacity(8_760);
        for (n, line) in text.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            let hour = if site.0 == "try2010_potsdam" {
                Hour {
                    dni: None,
                    beam_horizontal: field(&f, 6, &path, n + 1)?,
                    diffuse_horizontal: field(&f, 7, &path, n + 1)?,
                    temp_c: field(&f, 3, &path, n + 1)?,
                }
            } else {
                let ghi = field(&f, 3, &path, n + 1)?;
                let dhi = field(&f, 5, &path, n + 1)?;
                Hour {
                    dni: Some(field(&f, 4, &path, n + 1)?),
                    beam_horizontal: (ghi - dhi).max(0.0),
                    diffuse_horizontal: dhi,
                    temp_c: field(&f, 6, &path, n + 1)?,
                }
            };
            hours.push(hour);
        }
        ensure!(
            hours.len() == 8_760,
            "{}: expected 8,760 hourly rows, found {}",
            path.display(),
            hours.len()
        );
        Ok(Weather {
            name: site.0,
            latitude_deg: site.1,
            longitude_deg: site.2,
            utc_offset_h: site.3,
            hours,
        })
    }

    /// PV power per kWp (W) at unix second `t`, from the hour of local
    /// standard time that contains it.
    pub fn pv_w_per_kwp(&self, t: u64) -> f64 {
        let local = i64::try_from(t).expect("a unix time") + self.utc_offset_h * 3_600;
        let days = local.div_euclid(86_400);
        let (_, month, day) = civil_from_days(days);
        // Index into a 365-day year; 29 February uses 28 February.
        let day_of_year = days_from_civil(2025, month, day.min(if month == 2 { 28 } else { 31 }))
            - days_from_civil(2025, 1, 1);
        let hour_of_day = local.rem_euclid(86_400) / 3_600;
        let row =
            usize::try_from(day_of_year * 24 + hour_of_day).expect("in range") % self.hours.len();
        let h = self.hours[row];

        let n = (day_of_year + 1) as f64;
        let declination = (23.45 * (2.0 * PI * (284.0 + n) / 365.0).sin()).to_radians();
        let b = 2.0 * PI * (n - 81.0) / 364.0;
        let equation_of_time_min = 9.87 * (2.0 * b).sin() - 7.53 * b.cos() - 1.5 * b.sin();
        let utc_hours = (t % 86_400) as f64 / 3_600.0;
        let solar_time = utc_hours + self.longitude_deg / 15.0 + equation_of_time_min / 60.0;
        let hour_angle = (15.0 * (solar_time - 12.0)).to_radians();
        let phi = self.latitude_deg.to_radians();
        let tilt = 30f64.to_radians();
        let cos_zenith =
            phi.sin() * declination.sin() + phi.cos() * declination.cos() * hour_angle.cos();
        let cos_incidence = declination.sin() * (phi - tilt).sin()
            + declination.cos() * (phi - tilt).cos() * hour_angle.cos();
        // Sun above 5°: below that the horizontal-to-normal conversion explodes.
        let sun_up = cos_zenith > 0.087;
        let dni = match h.dni {
            Some(dni) => dni,
            None if sun_up => (h.beam_horizontal / cos_zenith).min(1_100.0),
            None => 0.0,
        };
        let beam = if sun_up {
            dni * cos_incidence.max(0.0)
        } else {
            0.0
        };
        let global = h.beam_horizontal + h.diffuse_horizontal;
        let poa = beam
            + h.diffuse_horizontal * (1.0 + tilt.cos()) / 2.0
            + global * 0.2 * (1.0 - tilt.cos()) / 2.0;
        let cell_c = h.temp_c + poa * 0.031_25;
        (poa * 0.85 * (1.0 - 0.004 * (cell_c - 25.0))).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        default_dir()
    }

    #[test]
    fn the_load_profile_sums_to_its_normalisation() {
        let profile = LoadProfile::load(&dir()).unwrap();
        // A 2025 calendar sums to 998,627 kWh (data README).
        let mut total = 0.0;
        let start = days_from_civil(2025, 1, 1);
        for days in start..start + 365 {
            let (_, month, _) = civil_from_days(days);
            for slot in 0..96 {
                total += profile.kwh(month, day_type(days), slot);
            }
        }
        assert!((total - 998_627.0).abs() < 1_000.0, "{total}");
    }

    #[test]
    fn pv_yield_is_plausible_at_both_sites() {
        for (name, low, high) in [
            ("try2010_potsdam", 850.0, 1_250.0),
            ("tmy3_greensboro", 1_200.0, 1_700.0),
        ] {
            let weather = Weather::load(&dir(), name).unwrap();
            let start = 1_735_689_600u64; // 2025-01-01T00:00:00Z
            let kwh_per_kwp: f64 = (0..365 * 24 * 4)
                .map(|q| weather.pv_w_per_kwp(start + q * 900 + 450) * 0.25 / 1_000.0)
                .sum();
            assert!(
                (low..high).contains(&kwh_per_kwp),
                "{name}: {kwh_per_kwp} kWh/kWp a year"
            );
            // Some hours of June reach a good share of the peak.
            let june = 1_748_736_000u64; // 2025-06-01T00:00:00Z
            let peak = (0..30 * 24)
                .map(|h| weather.pv_w_per_kwp(june + h * 3_600 + 1_800))
                .fold(0.0, f64::max);
            assert!(
                (500.0..1_000.0).contains(&peak),
                "{name}: June peak {peak} W/kWp"
            );
        }
    }
}

//! `Config`: the validated native twin of `s3dlio.StorageConfig`.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};
use s3dlio_core::config::seconds;
use s3dlio_core::StoreConfig;

use crate::errors::{invalid_config, to_pyerr};

#[pyclass(frozen, module = "s3dlio._core", name = "Config")]
pub struct Config {
    pub inner: StoreConfig,
}

fn opt_string(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
    if v.is_none() {
        return Ok(None);
    }
    v.extract::<String>().map(Some).map_err(|_| invalid_config(format!("{name} must be a string or None")))
}

fn number(name: &str, v: &Bound<'_, PyAny>) -> PyResult<f64> {
    if v.is_instance_of::<PyBool>() {
        return Err(invalid_config(format!("{name} must be a number, not a bool")));
    }
    v.extract::<f64>().map_err(|_| invalid_config(format!("{name} must be a number")))
}

fn integer<T: for<'a, 'py> FromPyObject<'a, 'py>>(name: &str, v: &Bound<'_, PyAny>) -> PyResult<T> {
    if v.is_instance_of::<PyBool>() {
        return Err(invalid_config(format!("{name} must be an integer, not a bool")));
    }
    v.extract::<T>().map_err(|_| invalid_config(format!("{name} must be a non-negative integer in range")))
}

fn secs(name: &str, v: &Bound<'_, PyAny>) -> PyResult<std::time::Duration> {
    seconds(name, number(name, v)?).map_err(to_pyerr)
}

#[pymethods]
impl Config {
    /// Validate and build. Unknown keys are an error.
    #[new]
    #[pyo3(signature = (**kwargs))]
    fn new(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let mut c = StoreConfig::default();
        if let Some(kwargs) = kwargs {
            for (k, v) in kwargs.iter() {
                let key: String = k.extract()?;
                match key.as_str() {
                    "endpoint_url" => c.endpoint_url = opt_string(&key, &v)?,
                    "region" => c.region = opt_string(&key, &v)?,
                    "access_key_id" => c.access_key_id = opt_string(&key, &v)?,
                    "secret_access_key" => c.secret_access_key = opt_string(&key, &v)?,
                    "session_token" => c.session_token = opt_string(&key, &v)?,
                    "profile" => c.profile = opt_string(&key, &v)?,
                    "force_path_style" => {
                        c.force_path_style = if v.is_none() {
                            None
                        } else {
                            Some(
                                v.extract::<bool>()
                                    .map_err(|_| invalid_config("force_path_style must be a bool or None"))?,
                            )
                        }
                    }
                    "connect_timeout" => c.connect_timeout = secs(&key, &v)?,
                    "read_timeout" => c.read_timeout = secs(&key, &v)?,
                    "operation_timeout" => {
                        c.operation_timeout = if v.is_none() { None } else { Some(secs(&key, &v)?) }
                    }
                    "initial_backoff" => c.initial_backoff = secs(&key, &v)?,
                    "max_attempts" => c.max_attempts = integer(&key, &v)?,
                    "max_concurrency" => c.max_concurrency = integer(&key, &v)?,
                    "multipart_threshold" => c.multipart_threshold = integer(&key, &v)?,
                    "part_size" => c.part_size = integer(&key, &v)?,
                    other => return Err(invalid_config(format!("unknown configuration key {other:?}"))),
                }
            }
        }
        c.validate().map_err(to_pyerr)?;
        Ok(Config { inner: c })
    }

    /// The settings (credentials redacted).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = &self.inner;
        let d = PyDict::new(py);
        let redact = |v: &Option<String>| v.as_ref().map(|_| "***");
        d.set_item("endpoint_url", &c.endpoint_url)?;
        d.set_item("region", &c.region)?;
        d.set_item("access_key_id", &c.access_key_id)?;
        d.set_item("secret_access_key", redact(&c.secret_access_key))?;
        d.set_item("session_token", redact(&c.session_token))?;
        d.set_item("profile", &c.profile)?;
        d.set_item("force_path_style", c.force_path_style)?;
        d.set_item("connect_timeout", c.connect_timeout.as_secs_f64())?;
        d.set_item("read_timeout", c.read_timeout.as_secs_f64())?;
        d.set_item("operation_timeout", c.operation_timeout.map(|t| t.as_secs_f64()))?;
        d.set_item("initial_backoff", c.initial_backoff.as_secs_f64())?;
        d.set_item("max_attempts", c.max_attempts)?;
        d.set_item("max_concurrency", c.max_concurrency)?;
        d.set_item("multipart_threshold", c.multipart_threshold)?;
        d.set_item("part_size", c.part_size)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// The config to use: the given one, or defaults (resolved from the environment per client).
pub fn resolve(config: Option<&Bound<'_, Config>>) -> StoreConfig {
    config.map_or_else(StoreConfig::default, |c| c.get().inner.clone())
}

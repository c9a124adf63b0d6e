//! `Config`: the validated native twin of `s3dlio.StorageConfig`. Every field is converted
//! generically from the core's one declaration (`StoreConfig::FIELDS`); nothing here names a field.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList};
use s3dlio_core::config::{mask_key_id, FieldKind, FieldSpec, Value};
use s3dlio_core::StoreConfig;

use crate::errors::{invalid_config, to_pyerr};

#[pyclass(frozen, module = "s3dlio._core", name = "Config")]
pub struct Config {
    pub inner: StoreConfig,
}

/// A Python value as the core's generic [`Value`], typed by the field's kind.
fn value(spec: &FieldSpec, v: &Bound<'_, PyAny>) -> PyResult<Value> {
    let name = spec.name;
    if v.is_none() {
        return Ok(Value::None); // the core refuses None for fields that are not optional
    }
    let is_bool = v.is_instance_of::<PyBool>();
    match spec.kind {
        FieldKind::OptStr => v
            .extract::<String>()
            .map(Value::Str)
            .map_err(|_| invalid_config(format!("{name} must be a string or None"))),
        FieldKind::OptBool | FieldKind::Bool if is_bool => Ok(Value::Bool(v.extract::<bool>()?)),
        FieldKind::OptBool | FieldKind::Bool => Err(invalid_config(format!("{name} must be a bool"))),
        FieldKind::Seconds | FieldKind::OptSeconds if is_bool => {
            Err(invalid_config(format!("{name} must be a number, not a bool")))
        }
        FieldKind::Seconds | FieldKind::OptSeconds => v
            .extract::<f64>()
            .map(Value::Float)
            .map_err(|_| invalid_config(format!("{name} must be a number"))),
        FieldKind::Int | FieldKind::OptInt if is_bool => {
            Err(invalid_config(format!("{name} must be an integer, not a bool")))
        }
        FieldKind::Int | FieldKind::OptInt => v
            .extract::<u64>()
            .map(Value::Int)
            .map_err(|_| invalid_config(format!("{name} must be a non-negative integer in range"))),
    }
}

fn to_py<'py>(py: Python<'py>, v: Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::None => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
        Value::Str(s) => s.into_pyobject(py)?.into_any(),
    })
}

fn kind_name(k: FieldKind) -> &'static str {
    match k {
        FieldKind::OptStr => "str | None",
        FieldKind::OptBool => "bool | None",
        FieldKind::Bool => "bool",
        FieldKind::Seconds => "float",
        FieldKind::OptSeconds => "float | None",
        FieldKind::Int => "int",
        FieldKind::OptInt => "int | None",
    }
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
                let Some(spec) = StoreConfig::FIELDS.iter().find(|f| f.name == key) else {
                    return Err(invalid_config(format!("unknown configuration key {key:?}")));
                };
                c.set(spec.name, value(spec, &v)?).map_err(to_pyerr)?;
            }
        }
        c.validate().map_err(to_pyerr)?;
        Ok(Config { inner: c })
    }

    /// The settings (secrets redacted, the access key id shown by its last 4 characters).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for spec in StoreConfig::FIELDS {
            let v = self.inner.get(spec.name).unwrap_or(Value::None);
            let v = match v {
                Value::Str(_) if spec.secret => Value::Str("***".to_owned()),
                Value::Str(k) if spec.name == "access_key_id" => Value::Str(mask_key_id(&k)),
                v => v,
            };
            d.set_item(spec.name, to_py(py, v)?)?;
        }
        Ok(d)
    }

    /// The declaration of every field, in order: `(name, type, default, secret, doc)`.
    #[staticmethod]
    fn schema<'py>(py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let defaults = StoreConfig::default();
        let rows = PyList::empty(py);
        for spec in StoreConfig::FIELDS {
            let default = to_py(py, defaults.get(spec.name).unwrap_or(Value::None))?;
            rows.append((spec.name, kind_name(spec.kind), default, spec.secret, spec.doc))?;
        }
        Ok(rows)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// The config to use: the given one, or defaults (resolved from the environment per client).
pub fn resolve(config: Option<&Bound<'_, Config>>) -> StoreConfig {
    config.map_or_else(StoreConfig::default, |c| c.get().inner.clone())
}

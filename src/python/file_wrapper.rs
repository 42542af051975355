#![forbid(unsafe_code)]
//! `wsgi.file_wrapper`: iterates a file-like object in blocks and closes it.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[pyclass(module = "ngx_wsgi", name = "FileWrapper")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=65536))]
    fn new(filelike: Py<PyAny>, blksize: i64) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: if blksize > 0 { blksize as usize } else { 65536 },
        }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        let empty = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().is_empty(),
            Err(_) => data.len().map(|n| n == 0).unwrap_or(true),
        };
        Ok(if empty { None } else { Some(data) })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(pyo3::intern!(py, "close"))? {
            f.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}

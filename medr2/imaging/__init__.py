"""Imaging: read a DICOM / PNG / JPEG safely into an 8-bit image and allow-listed metadata.

Modules: `loader` (any file -> `LoadedImage`, one `ImageLoadError` with a one-line message; `medr2 inspect`),
`dicom` (DICOM decoding: size and deflate guards, LUT -> VOI -> MONOCHROME1, PHI allow-list).
Hands on: `LoadedImage` (pixels + safe metadata + warnings) to the inference pipeline and the app.
"""

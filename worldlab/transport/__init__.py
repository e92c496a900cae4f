"""WebRTC transport: the `ctl` data-channel protocol, the paced video track, and peer setup.

The same peer code serves the browser page (`worldlab serve`) and the JupyterLab widget.
"""

"""The wire protocol between a hub and its workers and admins, shared by both sides.

``messages`` are the JSON bodies (pydantic, validated on arrival), ``protocol`` the constants
and the error code of each ``TesseraError`` answer, ``client`` the typed HTTP client. This
package imports neither ``tessera.hub`` nor ``tessera.worker``: a volunteer's worker needs none
of the server's code.
"""

"""An in-memory Cloud Storage emulator (gcp-storage-emulator) with one bucket, served from its
own process: `python -m tests.gcs_emulator PORT BUCKET`. The tests run it apart from pytest so
that its HTTP server thread (and the broken pipes it logs when a client is killed mid-request)
shares no process with the JAX runtime under test.

One gap of the emulator is filled here (`add_generation_header`): its media downloads lack
the x-goog-generation header that real Cloud Storage sends and tensorstore reads (without it
orbax's OCDBT manifest read fails with "Malformed StorageGeneration").
"""
import sys
import time

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.handlers import objects as emulator_objects


def add_generation_header():
  """Makes the emulator's object downloads carry x-goog-generation / x-goog-metageneration, as
  Cloud Storage's do (https://cloud.google.com/storage/docs/xml-api/reference-headers)."""
  download = emulator_objects.download

  def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  emulator_objects.download = download_with_generation  # objects.get(alt=media) calls it.
  for _, handlers in emulator_server.HANDLERS:  # The routes hold the function itself.
    for method, handler in list(handlers.items()):
      if handler is download:
        handlers[method] = download_with_generation


def main(port: int, bucket: str) -> None:
  add_generation_header()
  server = emulator_server.create_server("127.0.0.1", port, in_memory=True,
                                         default_bucket=bucket)
  server.start()
  print("serving", flush=True)
  try:
    while True:
      time.sleep(3600)
  finally:
    server.stop()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])

"""Executes a notebook with the Deno kernel, headlessly, without losing outputs.

Plain `jupyter nbconvert --execute` can drop display messages that the Deno
kernel sends after it reports "idle". This client keeps reading the IOPub
channel for a short while after idle and keeps any late outputs of the cell.

Usage: /usr/bin/python3 notebooks/_runner.py <in.ipynb> <out.ipynb> [timeout_s]
Exit status 1 if a cell raises, 3 if a cell tagged "expect-output" produced none.
Only `deno task notebooks` uses this; the package never runs Python.
"""
import os
import sys
from queue import Empty

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionComplete, CellExecutionError
from nbclient.util import ensure_async


class LingeringClient(NotebookClient):
    linger = 0.5  # seconds to keep reading IOPub after the kernel says idle

    async def _async_poll_output_msg(self, parent_msg_id, cell, cell_index):
        assert self.kc is not None
        complete = False
        while True:
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=self.linger if complete else None))
            except Empty:
                if complete:
                    return
                continue
            if msg["parent_header"].get("msg_id") != parent_msg_id:
                continue
            try:
                self.process_message(msg, cell, cell_index)
            except CellExecutionComplete:
                complete = True


def main():
    src, dst = sys.argv[1], sys.argv[2]
    timeout = int(sys.argv[3]) if len(sys.argv) > 3 else 1800
    nb = nbformat.read(src, as_version=4)
    # Run in the notebook's own directory, as Jupyter does when a user opens it.
    here = os.path.dirname(os.path.abspath(src))
    client = LingeringClient(nb, timeout=timeout, kernel_name="deno", resources={"metadata": {"path": here}})
    status = 0
    try:
        client.execute()
    except CellExecutionError as err:
        print(str(err)[-3000:], file=sys.stderr)
        status = 1
    missing = [i for i, c in enumerate(nb.cells)
               if c.cell_type == "code" and "expect-output" in c.get("metadata", {}).get("tags", []) and not c.get("outputs")]
    if status == 0 and missing:
        print(f"cells {missing} are tagged expect-output but produced no output", file=sys.stderr)
        status = 3
    nbformat.write(nb, dst)
    sys.exit(status)


if __name__ == "__main__":
    main()

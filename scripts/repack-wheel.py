"""Writes a wheel again from its unpacked copy after files in it were changed (scripts/release.sh renames the
musl C library dependency of the extension module): the entries in their order and with their modes, RECORD's
hashes and sizes recomputed.

    python scripts/repack-wheel.py WHEEL FOLDER
"""
import base64, csv, hashlib, io, os, sys, zipfile

wheel, root = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as old:
    infos = old.infolist()
    record = next(i.filename for i in infos if i.filename.endswith(".dist-info/RECORD"))
    rows = []
    for row in csv.reader(io.StringIO(old.read(record).decode())):
        if row and row[0] != record:
            with open(os.path.join(root, row[0]), "rb") as f:
                data = f.read()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            row = [row[0], f"sha256={digest}", str(len(data))]
        rows.append(row)
out = io.StringIO()
csv.writer(out, lineterminator="\n").writerows(rows)
with zipfile.ZipFile(wheel + ".tmp", "w", zipfile.ZIP_DEFLATED) as new:
    for info in infos:
        if info.filename == record:
            data = out.getvalue().encode()
        elif info.is_dir():
            data = b""
        else:
            with open(os.path.join(root, info.filename), "rb") as f:
                data = f.read()
        new.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
os.replace(wheel + ".tmp", wheel)

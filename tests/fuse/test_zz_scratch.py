import os, time
from imagegen import jpeg_bytes
from mountkit import sync, live

def test_repl_unlink(client, dataset, mount, tmp_path):
    src = tmp_path / "d.jpg"; src.write_bytes(jpeg_bytes(46))
    client.images.upload(dataset.id, src, "/")
    m = mount(dataset.name, "--write-back", "0s", "--dir-cache-time", os.environ.get("DCT", "30s"))
    (m.path / "d.jpg").write_bytes(jpeg_bytes(42))
    sync(m)
    (m.path / "d.jpg").write_bytes(jpeg_bytes(12))
    os.unlink(m.path / "d.jpg")
    print("listdir", os.listdir(m.path))
    sync(m)
    print("listdir", os.listdir(m.path))
    print({p: i.id for p, i in live(client, dataset).items()})
    print(m.log()[-5000:])

def test_repl_rename(client, dataset, mount, tmp_path):
    src = tmp_path / "d.jpg"; src.write_bytes(jpeg_bytes(46))
    client.images.upload(dataset.id, src, "/")
    m = mount(dataset.name, "--write-back", "1h", "--dir-cache-time", os.environ.get("DCT", "30s"))
    (m.path / "d.jpg").write_bytes(jpeg_bytes(12))
    os.rename(m.path / "d.jpg", m.path / "c.jpg")
    print("listdir", os.listdir(m.path))
    sync(m)
    print("listdir", os.listdir(m.path))
    print({p: i.id for p, i in live(client, dataset).items()})
    assert sorted(live(client, dataset)) == ["/c.jpg"]

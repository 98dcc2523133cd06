"""MovieLens import: every layout, folder and zip, bad rows, idempotency, download errors.

Each test that touches a database runs on SQLite and on PostgreSQL (the `engine` fixture).
The data files are written by the tests themselves; only the last test reads real ml-100k.
"""

from __future__ import annotations

import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from app.models import Movie, MovieGenre, Rating
from app.movielens import importer, rows
from app.movielens.files import MovieLensFormatError, parse_title
from app.movielens.importer import ImportReport, import_movielens
from app.services.downloads import DownloadError, download_movielens
from tests.conftest import movielens_dir

GENRES_100K = "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\n"
GENRES_100K += "Documentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\n"
GENRES_100K += "Mystery|13\nRomance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n\n"


def _flags(*indexes: int) -> str:
    return "|".join("1" if i in indexes else "0" for i in range(19))


def write_100k(folder: Path, ratings: str, with_genre_file: bool = True) -> Path:
    """u.item in latin-1 as GroupLens ships it; one title without a year, one with an accent."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{_flags(3, 4, 5)}",
        f"2|GoldenEye (1995)|01-Jan-1995||http://x/2|{_flags(1, 2, 16)}",
        "3|City of Lost Children, The (Cité des enfants perdus, La) (1995)|01-Jan-1995||"
        f"http://x/3|{_flags(9, 15)}",
        f"4|unknown|||http://x/4|{_flags(0)}",
        f"5|Untitled Short|12-Mar-1996||http://x/5|{_flags()}",
    ]
    (folder / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    if with_genre_file:
        (folder / "u.genre").write_text(GENRES_100K)
    (folder / "u.data").write_text(ratings)
    return folder


def write_dat(folder: Path, ratings: str, encoding: str = "latin-1") -> Path:
    """ml-1m style (latin-1); ml-10m is the same with utf-8."""
    folder.mkdir(parents=True, exist_ok=True)
    movies = [
        "1::Toy Story (1995)::Animation|Children's|Comedy",
        "2::Jumanji (1995)::Adventure|Children's|Fantasy",
        "3::Misérables, Les (1995)::Drama|Musical",
        "4::Nameless::(no genres listed)",
    ]
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode(encoding))
    (folder / "ratings.dat").write_text(ratings)
    return folder


def write_csv(folder: Path, ratings: str) -> Path:
    """ml-latest style: headers, quoted titles with commas, trailing spaces, no-genre marker."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        '3,"Babylon 5 (1994–1998) ",Sci-Fi\n'
        "4,Hyena Road,(no genres listed)\n",
        encoding="utf-8",
    )
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + ratings)
    return folder


GOOD_100K = "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t3\t4\t881250951\n3\t4\t1\t881250952\n"
GOOD_DAT = "1::1::5::978300760\n1::2::3::978302109\n2::3::4::978301968\n"
GOOD_CSV = "1,1,4.0,964982703\n1,2,4.5,964981247\n2,3,0.5,964982224\n2,4,3.5,964983815\n"

WRITERS = {
    "ml-100k": (write_100k, GOOD_100K),
    "ml-1m": (write_dat, GOOD_DAT),
    "ml-latest": (write_csv, GOOD_CSV),
}


def zip_folder(folder: Path, archive: Path, top: str | None) -> Path:
    """Zip the files of folder, inside a top folder when given (as GroupLens does)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        if top:
            zipped.writestr(f"{top}/", "")
        for file in sorted(folder.iterdir()):
            zipped.write(file, f"{top}/{file.name}" if top else file.name)
    return archive


def count(engine: Engine, model: type) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(model)) or 0


def ratings_of(engine: Engine) -> dict[tuple[int, int], tuple[float, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Rating.user_id, Rating.movie_id, Rating.rating, Rating.timestamp)
        )
        return {(u, m): (r, t) for u, m, r, t in rows}


def movies_of(engine: Engine) -> dict[int, tuple[str, int | None, list[str]]]:
    with engine.connect() as conn:
        movies = {
            m.id: (m.title, m.year) for m in conn.execute(select(Movie.id, Movie.title, Movie.year))
        }
        genres: dict[int, list[str]] = {movie_id: [] for movie_id in movies}
        for movie_id, genre in conn.execute(
            select(MovieGenre.movie_id, MovieGenre.genre).order_by(MovieGenre.genre)
        ):
            genres[movie_id].append(genre)
    return {movie_id: (*movies[movie_id], genres[movie_id]) for movie_id in movies}


# ----------------------------------------------------------------- title parsing (no database)


@pytest.mark.parametrize(
    ("raw", "title", "year"),
    [
        ("Toy Story (1995)", "Toy Story (1995)", 1995),
        ("Star Wars (1977)", "Star Wars (1977)", 1977),
        (
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
            1995,
        ),
        ("Nixon (1995) ", "Nixon (1995)", 1995),
        ("Babylon 5 (1994–1998)", "Babylon 5 (1994–1998)", 1994),
        ("Fawlty Towers (1975-1979)", "Fawlty Towers (1975-1979)", 1975),
        ("Stranger Things (2016– )", "Stranger Things (2016– )", 2016),
        ("Hyena Road", "Hyena Road", None),
        ("1492: Conquest of Paradise (1992)", "1492: Conquest of Paradise (1992)", 1992),
        ("2001 (film)", "2001 (film)", None),
        ("Odd (0042)", "Odd (0042)", None),
    ],
)
def test_parse_title_keeps_title_and_reads_year(raw: str, title: str, year: int | None) -> None:
    assert parse_title(raw) == (title, year)


# ----------------------------------------------------------------- layouts, folder and zip


@pytest.mark.parametrize("packaging", ["folder", "zip-top-folder", "zip-flat", "parent-folder"])
@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_layout_imports_from_folder_and_zip(
    engine: Engine, tmp_path: Path, layout: str, packaging: str
) -> None:
    write, ratings = WRITERS[layout]
    folder = write(tmp_path / "data" / layout, ratings)
    if packaging == "folder":
        path = folder
    elif packaging == "parent-folder":
        path = folder.parent  # the folder a zip was extracted into
    else:
        top = layout if packaging == "zip-top-folder" else None
        path = zip_folder(folder, tmp_path / f"{layout}.zip", top)

    report = import_movielens(engine, path)

    expected_ratings = ratings.count("\n")
    assert report.layout == layout
    assert report.skipped == {}
    assert (report.movies_added, report.movies_seen) == (count(engine, Movie), count(engine, Movie))
    assert report.ratings_added == report.ratings_seen == expected_ratings
    assert count(engine, Rating) == expected_ratings
    assert report.seconds > 0


def test_100k_titles_years_and_genre_flags(engine: Engine, tmp_path: Path) -> None:
    import_movielens(engine, write_100k(tmp_path / "ml-100k", GOOD_100K))

    movies = movies_of(engine)
    assert movies[1] == ("Toy Story (1995)", 1995, ["Animation", "Children's", "Comedy"])
    assert movies[2] == ("GoldenEye (1995)", 1995, ["Action", "Adventure", "Thriller"])
    assert movies[3] == (
        "City of Lost Children, The (Cité des enfants perdus, La) (1995)",
        1995,
        ["Fantasy", "Sci-Fi"],
    )
    assert movies[4] == ("unknown", None, ["unknown"])
    assert movies[5] == ("Untitled Short", 1996, [])  # year from the release date column
    assert ratings_of(engine)[(1, 1)] == (5.0, 881250949)


def test_100k_without_genre_file_uses_the_standard_list(engine: Engine, tmp_path: Path) -> None:
    folder = write_100k(tmp_path / "ml-100k", GOOD_100K, with_genre_file=False)
    import_movielens(engine, folder)
    assert movies_of(engine)[2][2] == ["Action", "Adventure", "Thriller"]


@pytest.mark.parametrize("encoding", ["latin-1", "utf-8"])
def test_dat_titles_decode_as_latin1_or_utf8(engine: Engine, tmp_path: Path, encoding: str) -> None:
    import_movielens(engine, write_dat(tmp_path / "ml", GOOD_DAT, encoding))

    movies = movies_of(engine)
    assert movies[3] == ("Misérables, Les (1995)", 1995, ["Drama", "Musical"])
    assert movies[1][2] == ["Animation", "Children's", "Comedy"]
    assert movies[4] == ("Nameless", None, [])


def test_csv_quoting_trailing_spaces_and_no_genres(engine: Engine, tmp_path: Path) -> None:
    import_movielens(engine, write_csv(tmp_path / "ml-latest-small", GOOD_CSV))

    movies = movies_of(engine)
    assert movies[2] == ("American President, The (1995)", 1995, ["Comedy", "Drama", "Romance"])
    assert movies[3] == ("Babylon 5 (1994–1998)", 1994, ["Sci-Fi"])
    assert movies[4] == ("Hyena Road", None, [])
    assert ratings_of(engine)[(1, 2)] == (4.5, 964981247)


# ----------------------------------------------------------------- rows that cannot be used


BAD_CSV = (
    "1,1,4.0,964982703\n"
    "1,2,4.5\n"  # too few fields
    "1,2,4.5,964981247,9\n"  # too many fields
    "x,2,4.5,964981247\n"  # not a number
    "1.5,2,4.5,964981247\n"  # not an integer id
    "\n"  # empty line
    "1,3,0,964981247\n"  # zero stars
    "1,3,3.3,964981247\n"  # not a half step
    "1,3,5.5,964981247\n"  # above five
    "1,99,4.0,964981247\n"  # movie not in the catalog
    "2,1,2.0,1000\n"
    "2,1,5.0,2000\n"  # same user and movie again: the first one stays
    "3,4,3.5,964983815"  # no final newline: must still be loaded
)


def test_bad_rows_are_counted_and_good_rows_kept(engine: Engine, tmp_path: Path) -> None:
    report = import_movielens(engine, write_csv(tmp_path / "ml", BAD_CSV))

    assert report.skipped == {
        "ratings.malformed": 4,
        "ratings.empty_line": 1,
        "ratings.bad_rating": 3,
        "ratings.unknown_movie": 1,
        "ratings.duplicate": 1,
    }
    assert ratings_of(engine) == {
        (1, 1): (4.0, 964982703),
        (2, 1): (2.0, 1000),
        (3, 4): (3.5, 964983815),
    }
    assert report.ratings_seen == 13
    assert report.ratings_added == 3
    assert report.ratings_seen == report.ratings_added + sum(report.skipped.values())
    summary = report.summary()
    assert "ratings.unknown_movie: 1" in summary
    assert "3 added" in summary


def test_bad_rows_in_dat_and_100k_layouts(engine: Engine, tmp_path: Path) -> None:
    dat = "1::1::5::978300760\n1::2::3\n1::2::six::978300760\n1::3::0::978300760\n1::2::3::9"
    report = import_movielens(engine, write_dat(tmp_path / "dat", dat))
    assert report.skipped == {"ratings.malformed": 2, "ratings.bad_rating": 1}
    assert set(ratings_of(engine)) == {(1, 1), (1, 2)}


def test_windows_line_endings_and_header_only_in_first_block(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny blocks: lines, duplicates and the header check cross many block boundaries."""
    monkeypatch.setattr(importer, "BLOCK_BYTES", 7)
    rows = "".join(
        f"{u},{m},{(u % 10 + 1) / 2},{1000 + u}\r\n" for u in range(1, 60) for m in (1, 2)
    )
    report = import_movielens(engine, write_csv(tmp_path / "ml", rows + "1,1,1.0,5\r\n"))
    assert report.skipped == {"ratings.duplicate": 1}
    assert report.ratings_added == 118
    assert ratings_of(engine)[(1, 1)] == (1.0, 1001)


def test_bad_catalog_lines_and_duplicate_movie_ids(engine: Engine, tmp_path: Path) -> None:
    folder = write_dat(tmp_path / "ml", "1::1::5::1\n1::5::4::2\n")
    with (folder / "movies.dat").open("a", encoding="latin-1") as handle:
        handle.write("1::Toy Story again (2000)::Drama\n")  # same id: the first one stays
        handle.write("x::Broken (1999)::Drama\n")
        handle.write("5::Only two fields\n")

    report = import_movielens(engine, folder)

    assert report.skipped == {
        "movies.duplicate_id": 1,
        "movies.malformed": 2,
        "ratings.unknown_movie": 1,
    }
    assert report.movies_seen == 7
    assert count(engine, Movie) == report.movies_added == 4
    assert movies_of(engine)[1][:2] == ("Toy Story (1995)", 1995)


# ----------------------------------------------------------------- idempotency and existing rows


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_second_run_adds_nothing(engine: Engine, tmp_path: Path, layout: str) -> None:
    write, ratings = WRITERS[layout]
    folder = write(tmp_path / layout, ratings)
    first = import_movielens(engine, folder)
    before = (count(engine, Movie), count(engine, MovieGenre), count(engine, Rating))

    second = import_movielens(engine, folder)

    assert (count(engine, Movie), count(engine, MovieGenre), count(engine, Rating)) == before
    assert (second.movies_added, second.ratings_added) == (0, 0)
    assert second.movies_existing == first.movies_added
    assert second.ratings_existing == first.ratings_added
    assert second.skipped == {}
    assert "0 added" in second.summary()


def test_existing_rows_are_left_as_they_are(engine: Engine, tmp_path: Path) -> None:
    """A movie or rating already stored (e.g. through the API) wins over the file."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO movies (id, title, year) VALUES (1, 'Mine', NULL)"))
        conn.execute(text("INSERT INTO movie_genres (movie_id, genre) VALUES (1, 'Drama')"))
        conn.execute(text("INSERT INTO movies (id, title, year) VALUES (77, 'Only here', 2001)"))
        conn.execute(
            text(
                'INSERT INTO ratings (user_id, movie_id, rating, "timestamp") VALUES (1, 1, 1.0, 5)'
            )
        )
    ratings = GOOD_CSV + "9,77,2.5,7\n"  # a movie known to the database but not to the file

    report = import_movielens(engine, write_csv(tmp_path / "ml", ratings))

    movies = movies_of(engine)
    assert movies[1] == ("Mine", None, ["Drama"])
    assert count(engine, Movie) == 5
    assert (report.movies_added, report.movies_existing) == (3, 1)
    assert ratings_of(engine)[(1, 1)] == (1.0, 5)
    assert ratings_of(engine)[(9, 77)] == (2.5, 7)
    assert (report.ratings_added, report.ratings_existing) == (4, 1)


def test_shared_movie_ids_between_two_imports_are_not_duplicated(
    engine: Engine, tmp_path: Path
) -> None:
    import_movielens(engine, write_dat(tmp_path / "a", GOOD_DAT))
    report = import_movielens(engine, write_csv(tmp_path / "b", GOOD_CSV))

    assert count(engine, Movie) == 4
    assert (report.movies_added, report.movies_existing) == (0, 4)
    assert movies_of(engine)[2][0] == "Jumanji (1995)"  # the first catalog's entry stays
    assert (report.ratings_added, report.ratings_existing) == (1, 3)  # only (2, 4) is new
    assert count(engine, Rating) == 4


def test_a_failure_mid_import_leaves_nothing_behind(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction: no catalog without its ratings, and the connection stays usable."""
    real = rows.validate_block
    calls = {"n": 0}

    def failing(*args: object) -> rows.Batch:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "BLOCK_BYTES", 16)
    monkeypatch.setattr(importer, "validate_block", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        import_movielens(engine, write_csv(tmp_path / "ml", GOOD_CSV))

    assert count(engine, Movie) == count(engine, MovieGenre) == count(engine, Rating) == 0
    monkeypatch.setattr(importer, "validate_block", real)
    assert import_movielens(engine, tmp_path / "ml").ratings_added == 4


# ----------------------------------------------------------------- unknown layouts


def test_unknown_layout_names_what_was_looked_for(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(MovieLensFormatError) as info:
        import_movielens(engine, tmp_path / "empty")
    for name in ("u.data", "ratings.dat", "ratings.csv", "movies.csv"):
        assert name in str(info.value)

    archive = zip_folder(tmp_path / "empty", tmp_path / "empty.zip", "top")
    with pytest.raises(MovieLensFormatError, match="u.data"):
        import_movielens(engine, archive)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: (p / "x.txt").write_text("x") and p / "x.txt", "neither a folder nor a .zip"),
        (lambda p: (p / "u.data").write_text(GOOD_100K) and p, "not u.item"),
    ],
)
def test_bad_paths_raise_format_error(engine: Engine, tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MovieLensFormatError, match=message):
        import_movielens(engine, make(tmp_path))
    assert count(engine, Movie) == 0


def test_the_import_reports_progress_and_the_cli_draws_it(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service only reports; the CLI's bar goes to stderr, and only when asked."""
    from app.cli import _ByteBar

    folder = write_csv(tmp_path / "ml", GOOD_CSV)
    reports: list[tuple[str, int, int | None]] = []
    import_movielens(engine, folder, on_progress=lambda *a: reports.append(a))
    assert capsys.readouterr() == ("", "")
    assert reports and reports[-1][1] == reports[-1][2] == (folder / "ratings.csv").stat().st_size
    with _ByteBar(enabled=False) as quiet:
        import_movielens(engine, folder, on_progress=quiet)
    assert capsys.readouterr() == ("", "")
    with _ByteBar(enabled=True) as bar:
        import_movielens(engine, folder, on_progress=bar)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "ratings" in captured.err


def test_summary_reads_well() -> None:
    report = ImportReport(
        layout="ml-100k",
        source="/data/ml-100k",
        movies_added=2,
        movies_seen=2,
        ratings_added=10,
        ratings_seen=12,
        skipped={"ratings.bad_rating": 2},
        seconds=0.5,
    )
    text_ = report.summary()
    assert "ml-100k" in text_ and "10 added" in text_ and "ratings.bad_rating: 2" in text_
    assert "0.5 s" in text_


# ----------------------------------------------------------- download (never off this machine)


def test_download_unknown_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ml-100k.*ml-latest-small"):
        download_movielens("ml-5k", tmp_path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_unreachable_server_says_what_to_do(tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{_free_port()}/datasets/movielens"
    with pytest.raises(DownloadError, match="import-movielens") as info:
        download_movielens("ml-100k", tmp_path, base_url=base, timeout=2)
    assert "127.0.0.1" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A localhost HTTP server over a folder, standing in for files.grouplens.org."""
    root = tmp_path / "served"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_download_fetches_unzips_and_returns_the_data_folder(
    engine: Engine, tmp_path: Path, local_server: tuple[str, Path]
) -> None:
    base, root = local_server
    folder = write_100k(tmp_path / "src" / "ml-100k", GOOD_100K)
    zip_folder(folder, root / "ml-100k.zip", "ml-100k")

    fetched: list[tuple[str, int, int | None]] = []
    data = download_movielens(
        "ml-100k", tmp_path / "dest", base_url=base, on_progress=lambda *a: fetched.append(a)
    )

    assert data == tmp_path / "dest" / "ml-100k"
    assert (data / "u.data").read_text() == GOOD_100K
    size = (root / "ml-100k.zip").stat().st_size
    assert fetched[-1] == ("ml-100k.zip", size, size)  # the caller draws its own bar
    read: list[tuple[str, int, int | None]] = []
    assert import_movielens(engine, data, on_progress=lambda *a: read.append(a)).ratings_added == 4
    size = len(GOOD_100K.encode())
    assert read[-1] == ("ratings u.data", size, size)


def test_download_http_error_is_a_download_error(
    tmp_path: Path, local_server: tuple[str, Path]
) -> None:
    base, _ = local_server
    with pytest.raises(DownloadError, match="404"):
        download_movielens("ml-1m", tmp_path / "dest", base_url=base)
    assert list((tmp_path / "dest").iterdir()) == []


# ----------------------------------------------------------------- the real ml-100k


def test_real_ml_100k(engine: Engine) -> None:
    folder = movielens_dir()
    if folder is None:
        pytest.skip("ml-100k not found: set MOVIELENS_DIR or put it at ../shared/data/ml-100k")

    report = import_movielens(engine, folder)

    assert report.layout == "ml-100k"
    assert report.skipped == {}
    assert (report.movies_added, report.ratings_added) == (1682, 100_000)
    with engine.connect() as conn:
        users = conn.scalar(select(func.count(func.distinct(Rating.user_id))))
    assert users == 943
    assert count(engine, Movie) == 1682
    assert count(engine, Rating) == 100_000
    assert movies_of(engine)[50][:2] == ("Star Wars (1977)", 1977)

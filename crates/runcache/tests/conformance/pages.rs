//! Listing entries page by page (`Store::entries_page`) gives exactly `Store::entries`, in key
//! order, on every backend.

use runcache::Store;

pub fn entries_are_listed_in_pages(store: Store) {
    let t = store.task("conf.pages");
    for i in 0..25u32 {
        let _: u32 = t.get_or_compute(&i, || Ok::<_, String>(i)).unwrap();
    }
    let all: Vec<_> = store
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(all.len(), 25);
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.entries_page(after.as_ref(), 7).unwrap();
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        assert!(page.iter().all(|e| e.manifest.is_some()));
        after = page.last().map(|e| e.key);
        paged.extend(page.into_iter().map(|e| e.key));
    }
    assert_eq!(paged, all, "pages differ from the full listing");
    assert_eq!(store.entries_page(None, 3).unwrap().len(), 3);
}
